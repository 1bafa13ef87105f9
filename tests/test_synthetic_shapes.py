"""
The generated ``semask_shapes`` dataset: deterministic files, lazy and atomic generation,
registration through ``register_sem_seg_dataset``; the quick-start config and its
visualization tool. Tiny variants (a few images of 40-64 px) keep every test under seconds.
"""

import filecmp
import glob
import os
import subprocess
import sys
import unittest
from unittest import mock

import numpy as np
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config
from semask_d2.data import DatasetError, build_dataset_mapper
from semask_d2.data.datasets import builtin, register_semask_shapes, synthetic_shapes

import catalog_fixtures
from script_loader import load_script
from semask_d2.data.datasets.synthetic_shapes import (
    SHAPES_CLASSES,
    SHAPES_COLORS,
    ensure_semask_shapes,
    generate_semask_shapes,
    render_sample,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "semask_fpn_shapes.yaml")
# Split names of the tiny variants: registered as semask_shapes_<split>, apart from the
# builtin semask_shapes_{train,val}.
TINY = {"tinytrain": 6, "tinyval": 3}
TINY_NAMES = [f"semask_shapes_{split}" for split in TINY]
BUILTIN_NAMES = ["semask_shapes_train", "semask_shapes_val"]
NUM_CLASSES = len(SHAPES_CLASSES)
# Parameters of the quick-start model (6 classes), pinned.
QUICKSTART_PARAMS = 2_849_496


def files_under(folder):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(f"{folder}/**/*", recursive=True))


def dead_pid():
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


class CatalogTestCase(catalog_fixtures.CatalogTestCase):
    NAMES = TINY_NAMES + BUILTIN_NAMES

    def setUp(self):
        super().setUp()
        self.folder = os.path.join(self.root, "semask_shapes")


class TestGeneration(CatalogTestCase):
    def test_same_seed_gives_identical_bytes(self):
        first, second, other = (os.path.join(self.root, n) for n in ("a", "b", "c"))
        for folder, seed in ((first, 0), (second, 0), (other, 1)):
            os.makedirs(folder)
            generate_semask_shapes(folder, splits=TINY, image_size=40, seed=seed)
        names = files_under(first)
        self.assertEqual(names, files_under(second))
        self.assertIn("COMPLETE", names)
        self.assertIn(os.path.join("images", "tinytrain", "0005.png"), names)
        self.assertIn(os.path.join("annotations", "tinyval", "0002.png"), names)
        files = [n for n in names if n.endswith(".png")]
        self.assertEqual(len(files), 2 * sum(TINY.values()))
        match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
        self.assertEqual((mismatch, errors), ([], []))
        _, mismatch, _ = filecmp.cmpfiles(first, other, files, shallow=False)
        self.assertEqual(len(mismatch), len(files))

    def test_images_and_labels(self):
        os.makedirs(self.folder)
        generate_semask_shapes(self.folder, splits={"train": 12}, image_size=64, seed=0)
        seen = set()
        for path in sorted(glob.glob(f"{self.folder}/annotations/train/*.png")):
            with Image.open(path) as label_file:
                self.assertEqual(label_file.mode, "L")
                label = np.asarray(label_file)
            with Image.open(path.replace("annotations", "images")) as image_file:
                self.assertEqual((image_file.mode, image_file.size), ("RGB", (64, 64)))
            self.assertEqual(label.shape, (64, 64))
            values = set(np.unique(label).tolist())
            self.assertLessEqual(values, set(range(NUM_CLASSES)) | {255})
            seen |= values
        # Every class appears, and the ignore value too.
        self.assertEqual(seen, set(range(NUM_CLASSES)) | {255})

    def test_boundaries_are_ignored(self):
        for index in range(5):
            _, label = render_sample(np.random.default_rng([0, index]), 64)
            for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
                labelled = (a != 255) & (b != 255)
                # Two 4-adjacent labelled pixels always have the same class.
                self.assertTrue(np.array_equal(a[labelled], b[labelled]))
            ignored = (label == 255).mean()
            self.assertGreater(ignored, 0.0)
            self.assertLess(ignored, 0.25)


class TestLazyAtomicGeneration(CatalogTestCase):
    def test_registration_does_no_file_io_and_get_generates(self):
        self.addCleanup(builtin.register_all_builtin)  # back to the import-time registration
        with mock.patch.object(synthetic_shapes, "generate_semask_shapes") as generate:
            builtin.register_all_builtin(self.root)
            register_semask_shapes(self.root, splits=TINY, image_size=48)
        generate.assert_not_called()
        self.assertEqual(os.listdir(self.root), [])

        records = DatasetCatalog.get("semask_shapes_tinytrain")
        self.assertEqual(len(records), TINY["tinytrain"])
        self.assertEqual(
            records[0]["file_name"], os.path.join(self.folder, "images", "tinytrain", "0000.png")
        )
        self.assertEqual(
            records[0]["sem_seg_file_name"],
            os.path.join(self.folder, "annotations", "tinytrain", "0000.png"),
        )
        self.assertEqual((records[0]["height"], records[0]["width"]), (48, 48))
        self.assertEqual(len(DatasetCatalog.get("semask_shapes_tinyval")), TINY["tinyval"])
        # Generated once; later loads reuse the files.
        mtime = os.path.getmtime(os.path.join(self.folder, "COMPLETE"))
        DatasetCatalog.get("semask_shapes_tinytrain")
        self.assertEqual(os.path.getmtime(os.path.join(self.folder, "COMPLETE")), mtime)
        self.assertEqual(sorted(os.listdir(self.root)), ["semask_shapes"])

    def test_metadata_through_register_sem_seg_dataset(self):
        with mock.patch.object(
            synthetic_shapes,
            "register_sem_seg_dataset",
            wraps=synthetic_shapes.register_sem_seg_dataset,
        ) as register:
            register_semask_shapes(self.root)
        self.assertEqual([c.args[0] for c in register.call_args_list], BUILTIN_NAMES)
        for name, split in zip(BUILTIN_NAMES, ("train", "val")):
            meta = MetadataCatalog.get(name)
            self.assertEqual(meta.stuff_classes, list(SHAPES_CLASSES))
            self.assertEqual(meta.stuff_colors, [list(c) for c in SHAPES_COLORS])
            self.assertEqual(meta.ignore_label, 255)
            self.assertEqual(meta.evaluator_type, "sem_seg")
            self.assertEqual(meta.image_root, os.path.join(self.folder, "images", split))
            self.assertEqual(meta.sem_seg_root, os.path.join(self.folder, "annotations", split))
        # The builtin registration uses $DETECTRON2_DATASETS.
        self.addCleanup(builtin.register_all_builtin)
        builtin.register_all_builtin(self.root)
        self.assertEqual(
            MetadataCatalog.get("semask_shapes_val").image_root,
            os.path.join(self.folder, "images", "val"),
        )

    def test_incomplete_folder_and_stale_partials_are_replaced(self):
        # A dataset folder without COMPLETE (e.g. half deleted) and a killed run's partial copy.
        os.makedirs(os.path.join(self.folder, "images", "tinytrain"))
        Image.new("RGB", (8, 8)).save(os.path.join(self.folder, "images", "tinytrain", "x.png"))
        stale = os.path.join(self.root, f".semask_shapes.partial-{dead_pid()}-abc")
        live = os.path.join(self.root, f".semask_shapes.partial-{os.getppid()}-abc")
        for partial in (stale, live):
            os.makedirs(os.path.join(partial, "images"))

        self.assertTrue(ensure_semask_shapes(self.folder, splits=TINY, image_size=40))
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(live))  # may be another process's generation in progress
        self.assertNotIn(os.path.join("images", "tinytrain", "x.png"), files_under(self.folder))
        self.assertEqual(len(glob.glob(f"{self.folder}/images/tinytrain/*.png")), 6)
        self.assertFalse(ensure_semask_shapes(self.folder, splits=TINY, image_size=40))
        # Other parameters: generated again.
        self.assertTrue(ensure_semask_shapes(self.folder, splits=TINY, image_size=40, seed=3))
        self.assertEqual(
            sorted(os.listdir(self.root)), sorted(["semask_shapes", os.path.basename(live)])
        )

    def test_interrupted_generation_leaves_nothing(self):
        original = synthetic_shapes.generate_semask_shapes

        def interrupted(folder, **kwargs):
            original(folder, **kwargs)
            os.remove(os.path.join(folder, "COMPLETE"))
            raise KeyboardInterrupt

        with mock.patch.object(synthetic_shapes, "generate_semask_shapes", interrupted):
            with self.assertRaises(KeyboardInterrupt):
                ensure_semask_shapes(self.folder, splits=TINY, image_size=40)
        self.assertEqual(os.listdir(self.root), [])
        register_semask_shapes(self.root, splits=TINY, image_size=40)
        self.assertEqual(len(DatasetCatalog.get("semask_shapes_tinyval")), 3)

    def test_concurrent_generation_keeps_the_first(self):
        # Another process (a DDP rank) renamed its copy into place while this one generated.
        original = synthetic_shapes.generate_semask_shapes

        def racing(folder, **kwargs):
            os.makedirs(self.folder)
            original(self.folder, **kwargs)
            original(folder, **kwargs)

        with mock.patch.object(synthetic_shapes, "generate_semask_shapes", racing):
            self.assertTrue(ensure_semask_shapes(self.folder, splits=TINY, image_size=40))
        self.assertEqual(os.listdir(self.root), ["semask_shapes"])
        self.assertFalse(ensure_semask_shapes(self.folder, splits=TINY, image_size=40))

    def test_unwritable_root_is_a_dataset_error(self):
        with mock.patch.object(synthetic_shapes.tempfile, "mkdtemp", side_effect=PermissionError):
            with self.assertRaises(DatasetError) as ctx:
                ensure_semask_shapes(self.folder, splits=TINY, image_size=40)
        self.assertIn("Fix:", str(ctx.exception))


def quickstart_cfg():
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(QUICKSTART)
    return cfg


class TestQuickstart(CatalogTestCase):
    def test_config_merges_and_builds(self):
        cfg = quickstart_cfg()
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, NUM_CLASSES)
        self.assertEqual(cfg.DATASETS.TRAIN, ("semask_shapes_train",))
        self.assertEqual(cfg.DATASETS.TEST, ("semask_shapes_val",))
        self.assertEqual(cfg.MODEL.DEVICE, "cpu")
        self.assertEqual(cfg.MODEL.WEIGHTS, "")
        self.assertFalse(cfg.SOLVER.AMP.ENABLED)
        self.assertIn(cfg.MODEL.SEM_SEG_HEAD.NORM, ("BN", "GN"))
        self.assertEqual(len(cfg.MODEL.SWIN.SEM_WINDOWED), 4)
        # Evaluated once, at the end; no intermediate checkpoint.
        self.assertIn(cfg.TEST.EVAL_PERIOD, (0, cfg.SOLVER.MAX_ITER))
        self.assertGreaterEqual(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)

        torch.manual_seed(0)
        model = build_model(cfg)
        self.assertEqual(sum(p.numel() for p in model.parameters()), QUICKSTART_PARAMS)
        size = cfg.INPUT.CROP.SIZE[0]
        batch = [
            {
                "image": torch.rand(3, size, size) * 255,
                "sem_seg": torch.randint(0, 6, (size, size)),
            },
            {"image": torch.rand(3, 61, 90) * 255, "sem_seg": torch.full((61, 90), 255)},
        ]
        with EventStorage():
            losses = model.train()(batch)
        self.assertEqual(set(losses), {"loss_sem_seg", "loss_cate"})
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        model.eval()
        with torch.no_grad():
            output = model([{"image": batch[1]["image"], "height": 61, "width": 90}])[0]
        self.assertEqual(output["sem_seg"].shape, (NUM_CLASSES, 61, 90))

    def test_mappers_read_the_generated_files(self):
        register_semask_shapes(self.root, splits=TINY, image_size=48)
        cfg = quickstart_cfg()
        cfg.DATASETS.TRAIN = ("semask_shapes_tinytrain",)
        record = DatasetCatalog.get("semask_shapes_tinytrain")[0]
        sample = build_dataset_mapper(cfg, is_train=True)(record)
        size = cfg.INPUT.SIZE_DIVISIBILITY
        self.assertEqual(tuple(sample["image"].shape), (3, size, size))
        self.assertLessEqual(set(sample["sem_seg"].unique().tolist()), set(range(6)) | {255})
        sample = build_dataset_mapper(cfg, is_train=False)(record)
        self.assertEqual(sample["image"].shape[0], 3)

    def test_visualize_predictions(self):
        register_semask_shapes(self.root, splits=TINY, image_size=48)
        cfg = quickstart_cfg()
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), save_dir=self.root).save("model_final")
        tool = load_script("tools/visualize_predictions.py")
        argv = ["--config-file", QUICKSTART, "--dataset", "semask_shapes_tinyval", "--num-images"]
        written = tool.main(argv + ["2", "--scale", "1", "OUTPUT_DIR", self.root])
        self.assertEqual(written, os.path.join(self.root, "predictions.png"))
        with Image.open(written) as image:
            # 3 panels of 48 px with 2 gaps of 4; a title band of 16 over 2 rows with 1 gap.
            self.assertEqual(image.size, (3 * 48 + 2 * 4, 16 + 2 * 48 + 4))


if __name__ == "__main__":
    unittest.main()

"""
The generated ``semask_shapes_panoptic`` dataset and its quick start
(``dev/quickstart.sh --panoptic``): deterministic files, instances kept apart, JSON and PNGs in
step, registration through the panoptic JSON loader with PQ, mask AP and mIoU from the
evaluators, the config, and the panoptic drawing of ``tools/visualize_predictions.py``. Tiny
variants (a few images of 48-64 px) keep every test within seconds; nothing is trained here.
"""

import filecmp
import glob
import json
import os
import re
import subprocess
import sys
import unittest
from unittest import mock

import numpy as np
import pycocotools.mask as mask_util
import torch
from panopticapi.utils import rgb2id
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.visualizer import Visualizer

from semask_d2 import add_semask_config
from semask_d2.data import build_dataset_mapper
from semask_d2.data.datasets import builtin, register_semask_shapes_panoptic
from semask_d2.data.datasets import synthetic_shapes_panoptic as shapes_panoptic
from semask_d2.data.datasets.synthetic_shapes_panoptic import (
    PANOPTIC_CATEGORIES,
    generate_semask_shapes_panoptic,
    render_panoptic_sample,
)
from semask_d2.evaluation import build_evaluator

import catalog_fixtures
from script_loader import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart", "semask_mask2former_shapes_panoptic.yaml")
QUICKSTART_SH = os.path.join(REPO, "dev", "quickstart.sh")
# Split names of the tiny variants, registered as semask_shapes_panoptic_<split>.
TINY = {"tinytrain": 4, "tinyval": 2}
TINY_NAMES = [f"semask_shapes_panoptic_{split}" for split in TINY]
BUILTIN_NAMES = ["semask_shapes_panoptic_train", "semask_shapes_panoptic_val"]
# COCO ids: things 1-3 (contiguous 0-2), stuff 4-6 (contiguous 3-5).
THINGS, STUFF = (1, 2, 3), (4, 5, 6)
# Parameters of the quick-start model (6 classes, 20 queries), pinned.
PARAMS = 3_052_281


def files_under(folder):
    return sorted(os.path.relpath(p, folder) for p in glob.glob(f"{folder}/**/*", recursive=True))


def read_ids(path):
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def quickstart_cfg():
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(CONFIG)
    return cfg


class CatalogTestCase(catalog_fixtures.CatalogTestCase):
    NAMES = TINY_NAMES + BUILTIN_NAMES

    def setUp(self):
        super().setUp()
        self.folder = os.path.join(self.root, "semask_shapes_panoptic")


def neighbours(mask):
    """Pixels outside `mask` with a 4-neighbour inside it."""
    padded = np.pad(mask, 1)
    around = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return around & ~mask


class TestRendering(unittest.TestCase):
    def test_touching_instances_of_one_class_stay_apart(self):
        size, found = 64, []
        for index in range(10):
            image, segment_ids, segments = render_panoptic_sample(
                np.random.default_rng([0, index]), size
            )
            self.assertEqual((image.shape, image.dtype), ((size, size, 3), np.uint8))
            self.assertEqual((segment_ids.shape, segment_ids.dtype), ((size, size), np.int32))
            # Every pixel belongs to a segment: no void.
            self.assertEqual(np.unique(segment_ids).tolist(), [s.id for s in segments])
            things = [s for s in segments if s.category_id in THINGS]
            for earlier in things:
                for later in things:
                    if earlier.id >= later.id or earlier.category_id != later.category_id:
                        continue
                    # Pixels of the later instance that touch the earlier one: its class
                    # alone would merge the two.
                    boundary = neighbours(segment_ids == earlier.id) & (segment_ids == later.id)
                    if boundary.any():
                        found.append((index, image, segment_ids == later.id, boundary))
        # Such pairs are common: 1 image in 4 or so.
        self.assertGreaterEqual(len(found), 2)
        for index, image, later, boundary in found:
            # The later instance's dark outline runs along the boundary.
            interior = later & ~neighbours(~later)
            brightness = image.astype(np.float64).sum(axis=2)
            self.assertLess(brightness[boundary].mean(), 0.6 * brightness[interior].mean(), index)

    def test_things_stay_visible(self):
        size = 64
        for index in range(20):
            _, segment_ids, segments = render_panoptic_sample(
                np.random.default_rng([0, index]), size
            )
            things = [s for s in segments if s.category_id in THINGS]
            self.assertTrue(3 <= len(things) <= 6, (index, segments))
            self.assertTrue(1 <= len(segments) - len(things) <= 3, (index, segments))
            self.assertEqual([s.id for s in segments], list(range(1, len(segments) + 1)))
            for segment in things:
                # At least 0.4% of the image: 16.4 pixels at 64 px.
                self.assertGreaterEqual((segment_ids == segment.id).sum(), 0.004 * size * size)


class TestGeneration(CatalogTestCase):
    def test_same_seed_gives_identical_bytes(self):
        first, second, other = (os.path.join(self.root, n) for n in ("a", "b", "c"))
        for folder, seed in ((first, 0), (second, 0), (other, 1)):
            os.makedirs(folder)
            generate_semask_shapes_panoptic(folder, splits=TINY, image_size=48, seed=seed)
        names = files_under(first)
        self.assertEqual(names, files_under(second))
        expected = {"COMPLETE"}
        for split, count in TINY.items():
            expected |= {
                os.path.join("annotations", f"{k}_{split}.json") for k in ("panoptic", "instances")
            }
            for kind in ("images", "panoptic", "semantic"):
                expected |= {os.path.join(kind, split, f"{i:04d}.png") for i in range(count)}
        files = [n for n in names if os.path.isfile(os.path.join(first, n))]
        self.assertEqual(sorted(files), sorted(expected))
        _, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
        self.assertEqual((mismatch, errors), ([], []))
        # Another seed changes every file.
        match, _, _ = filecmp.cmpfiles(first, other, files, shallow=False)
        self.assertEqual(match, [])

    def test_json_and_pngs_agree(self):
        os.makedirs(self.folder)
        generate_semask_shapes_panoptic(self.folder, splits={"val": 3}, image_size=64)
        panoptic = read_json(os.path.join(self.folder, "annotations", "panoptic_val.json"))
        instances = read_json(os.path.join(self.folder, "annotations", "instances_val.json"))
        self.assertEqual(panoptic["categories"], list(PANOPTIC_CATEGORIES))
        self.assertEqual(
            instances["categories"],
            [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}],
        )
        self.assertEqual(panoptic["images"], instances["images"])
        self.assertEqual(
            panoptic["images"][2], {"id": 2, "file_name": "0002.png", "height": 64, "width": 64}
        )
        gt_instances = {}
        for annotation in instances["annotations"]:
            gt_instances.setdefault(annotation["image_id"], []).append(annotation)
        # Instance ids count from 1 over the split.
        ids = [a["id"] for a in instances["annotations"]]
        self.assertEqual(ids, list(range(1, len(ids) + 1)))
        for annotation in panoptic["annotations"]:
            image_id = annotation["image_id"]
            segment_ids = read_ids(
                os.path.join(self.folder, "panoptic", "val", annotation["file_name"])
            )
            with Image.open(
                os.path.join(self.folder, "semantic", "val", annotation["file_name"])
            ) as f:
                self.assertEqual(f.mode, "L")
                semantic = np.asarray(f)
            segments = annotation["segments_info"]
            self.assertEqual(sorted(np.unique(segment_ids).tolist()), [s["id"] for s in segments])
            things = []
            for segment in segments:
                mask = segment_ids == segment["id"]
                ys, xs = np.nonzero(mask)
                self.assertEqual(segment["area"], mask.sum())
                self.assertEqual(
                    segment["bbox"],
                    [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1],
                )
                self.assertEqual(segment["iscrowd"], 0)
                # Contiguous semantic id = COCO id - 1.
                self.assertEqual(set(semantic[mask].tolist()), {segment["category_id"] - 1})
                if segment["category_id"] in THINGS:
                    things.append(segment)
            # One COCO instance per thing segment, with its mask, area and box.
            coco = gt_instances[image_id]
            self.assertEqual([a["category_id"] for a in coco], [s["category_id"] for s in things])
            for annotation_, segment in zip(coco, things):
                mask = mask_util.decode(annotation_["segmentation"]).astype(bool)
                self.assertTrue(np.array_equal(mask, segment_ids == segment["id"]))
                self.assertEqual(annotation_["area"], segment["area"])
                self.assertEqual(annotation_["bbox"], segment["bbox"])
                self.assertEqual(annotation_["iscrowd"], 0)


class TestRegistration(CatalogTestCase):
    def test_registration_does_no_file_io_and_get_generates(self):
        self.addCleanup(builtin.register_all_builtin)  # back to the import-time registration
        with mock.patch.object(shapes_panoptic, "generate_semask_shapes_panoptic") as generate:
            builtin.register_all_builtin(self.root)
            register_semask_shapes_panoptic(self.root, splits=TINY, image_size=48)
        generate.assert_not_called()
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(
            MetadataCatalog.get("semask_shapes_panoptic_val").panoptic_root,
            os.path.join(self.folder, "panoptic", "val"),
        )

        records = DatasetCatalog.get("semask_shapes_panoptic_tinytrain")
        self.assertEqual(len(records), TINY["tinytrain"])
        record = records[1]
        self.assertEqual(
            record["file_name"], os.path.join(self.folder, "images", "tinytrain", "0001.png")
        )
        self.assertEqual(
            record["pan_seg_file_name"],
            os.path.join(self.folder, "panoptic", "tinytrain", "0001.png"),
        )
        self.assertEqual(
            record["sem_seg_file_name"],
            os.path.join(self.folder, "semantic", "tinytrain", "0001.png"),
        )
        self.assertEqual((record["image_id"], record["height"], record["width"]), (1, 48, 48))
        # Contiguous category ids: things 0-2, stuff 3-5.
        for segment in record["segments_info"]:
            self.assertEqual(segment["isthing"], segment["category_id"] < 3)
        self.assertEqual(sorted(os.listdir(self.root)), ["semask_shapes_panoptic"])
        self.assertEqual(len(DatasetCatalog.get("semask_shapes_panoptic_tinyval")), 2)

    def test_metadata(self):
        register_semask_shapes_panoptic(self.root)
        meta = MetadataCatalog.get("semask_shapes_panoptic_val")
        self.assertEqual(meta.evaluator_type, "coco_panoptic_seg")
        self.assertEqual(meta.thing_classes, ["disc", "square", "triangle"])
        self.assertEqual(
            meta.stuff_classes, ["disc", "square", "triangle", "smooth", "stripes", "grain"]
        )
        self.assertEqual(meta.thing_dataset_id_to_contiguous_id, {1: 0, 2: 1, 3: 2})
        self.assertEqual(
            meta.stuff_dataset_id_to_contiguous_id, {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
        )
        self.assertEqual((meta.ignore_label, meta.label_divisor), (255, 1000))
        annotations = os.path.join(self.folder, "annotations")
        self.assertEqual(meta.json_file, os.path.join(annotations, "instances_val.json"))
        self.assertEqual(meta.panoptic_json, os.path.join(annotations, "panoptic_val.json"))
        self.assertEqual(meta.sem_seg_root, os.path.join(self.folder, "semantic", "val"))
        self.assertEqual(meta.image_root, os.path.join(self.folder, "images", "val"))


def eval_cfg():
    cfg = quickstart_cfg()
    cfg.DATASETS.TRAIN = ("semask_shapes_panoptic_tinyval",)
    return cfg


def ground_truth_output(record, drop=None):
    """
    The model output that reproduces `record`'s ground truth, except that segment `drop` (an
    id) is missing from the panoptic segments (void there) and the instances.
    """
    segment_ids = read_ids(record["pan_seg_file_name"])
    with Image.open(record["sem_seg_file_name"]) as f:
        semantic = np.asarray(f).astype(np.int64)
    segments = [s for s in record["segments_info"] if s["id"] != drop]
    segment_ids[segment_ids == drop] = 0
    things = [s for s in segments if s["isthing"]]
    instances = Instances(segment_ids.shape)
    instances.pred_masks = torch.stack([torch.from_numpy(segment_ids == s["id"]) for s in things])
    instances.pred_masks = instances.pred_masks.float()
    instances.pred_boxes = Boxes(torch.zeros(len(things), 4))
    instances.scores = torch.ones(len(things))
    instances.pred_classes = torch.tensor([s["category_id"] for s in things])
    sem_seg = torch.nn.functional.one_hot(torch.from_numpy(semantic), 6).permute(2, 0, 1).float()
    panoptic = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in segments]
    return {
        "panoptic_seg": (torch.from_numpy(segment_ids), panoptic),
        "instances": instances,
        "sem_seg": sem_seg,
    }


class TestEvaluation(CatalogTestCase):
    def evaluate(self, outputs):
        evaluator = build_evaluator(eval_cfg(), "semask_shapes_panoptic_tinyval")
        evaluator.reset()
        for record, output in zip(self.records, outputs):
            evaluator.process([record], [output])
        return evaluator.evaluate()

    def setUp(self):
        super().setUp()
        register_semask_shapes_panoptic(self.root, splits=TINY, image_size=64)
        self.records = DatasetCatalog.get("semask_shapes_panoptic_tinyval")

    def test_perfect_prediction(self):
        results = self.evaluate([ground_truth_output(r) for r in self.records])
        self.assertEqual(set(results), {"panoptic_seg", "segm", "sem_seg"})
        for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
            self.assertAlmostEqual(results["panoptic_seg"][key], 100.0, places=4, msg=key)
        self.assertAlmostEqual(results["segm"]["AP"], 100.0, places=4)
        self.assertAlmostEqual(results["sem_seg"]["mIoU"], 100.0, places=4)

    def test_a_missed_instance(self):
        # The first thing of the first image, unpredicted: one FN of its class, the rest TPs
        # with IoU 1. PQ_c = TP / (TP + FN / 2) for that class, 1 for every other.
        first = self.records[0]
        missed = next(s for s in first["segments_info"] if s["isthing"])
        outputs = [
            ground_truth_output(first, drop=missed["id"]),
            ground_truth_output(self.records[1]),
        ]
        results = self.evaluate(outputs)
        count = sum(
            s["category_id"] == missed["category_id"]
            for r in self.records
            for s in r["segments_info"]
        )
        classes = {s["category_id"] for r in self.records for s in r["segments_info"]}
        things = {c for c in classes if c < 3}
        pq_missed = (count - 1) / (count - 1 + 0.5)
        self.assertAlmostEqual(
            results["panoptic_seg"]["PQ_th"],
            100 * (pq_missed + len(things) - 1) / len(things),
            places=4,
        )
        self.assertAlmostEqual(
            results["panoptic_seg"]["PQ"],
            100 * (pq_missed + len(classes) - 1) / len(classes),
            places=4,
        )
        self.assertAlmostEqual(results["panoptic_seg"]["PQ_st"], 100.0, places=4)


class TestQuickstart(CatalogTestCase):
    def test_config_values(self):
        cfg = quickstart_cfg()
        self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "SeMaskMaskFormer")
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, len(PANOPTIC_CATEGORIES))
        self.assertEqual(cfg.DATASETS.TRAIN, ("semask_shapes_panoptic_train",))
        self.assertEqual(cfg.DATASETS.TEST, ("semask_shapes_panoptic_val",))
        self.assertEqual(cfg.INPUT.DATASET_MAPPER_NAME, "mask_former_panoptic")
        test = cfg.MODEL.MASK_FORMER.TEST
        self.assertEqual((test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON), (True,) * 3)
        self.assertEqual((cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS), ("cpu", ""))
        self.assertEqual(len(cfg.MODEL.SWIN.SEM_WINDOWED), 4)
        self.assertFalse(cfg.TEST.AUG.ENABLED)
        # At most 3 stuff regions and 6 instances per image: a query for each.
        self.assertGreaterEqual(cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, 9)
        self.assertIn(cfg.TEST.EVAL_PERIOD, (0, cfg.SOLVER.MAX_ITER))
        self.assertGreaterEqual(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
        self.assertEqual(cfg.DATALOADER.NUM_WORKERS, 0)

    def test_model_trains_on_mapped_records(self):
        register_semask_shapes_panoptic(self.root, splits=TINY, image_size=48)
        cfg = quickstart_cfg()
        cfg.DATASETS.TRAIN = ("semask_shapes_panoptic_tinytrain",)
        torch.manual_seed(0)
        model = build_model(cfg)
        self.assertEqual(sum(p.numel() for p in model.parameters()), PARAMS)
        # The model's things: the contiguous ids of the training set's thing map.
        self.assertEqual(model.thing_ids, [0, 1, 2])
        mapper = build_dataset_mapper(cfg, is_train=True)
        records = DatasetCatalog.get("semask_shapes_panoptic_tinytrain")[:2]
        batch = [mapper(r) for r in records]
        size = cfg.INPUT.SIZE_DIVISIBILITY
        self.assertEqual(tuple(batch[0]["image"].shape), (3, size, size))
        with EventStorage():
            losses = model.train()(batch)
        self.assertIn("loss_cate", losses)
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        model.eval()
        with torch.no_grad():
            output = model([build_dataset_mapper(cfg, is_train=False)(records[0])])[0]
        self.assertEqual(set(output), {"sem_seg", "panoptic_seg", "instances"})
        self.assertEqual(tuple(output["panoptic_seg"][0].shape), (48, 48))

    def test_quickstart_script_runs_this_config(self):
        with open(QUICKSTART_SH) as f:
            script = f.read()
        block = re.search(r'"--panoptic" \]; then(.*?)\nfi\n', script, re.S)
        self.assertIsNotNone(block)
        self.assertIn("CONFIG=configs/quickstart/semask_mask2former_shapes_panoptic.yaml", block[1])
        self.assertIn("OUT=./output/quickstart_panoptic", block[1])
        self.assertIn("DATASET=semask_shapes_panoptic_val", block[1])

    def test_quickstart_script_prints_the_scores(self):
        with open(QUICKSTART_SH) as f:
            script = f.read()
        # The Python program that prints the scores of metrics.json.
        program = re.search(r"<<'EOF'\n(.*?)\nEOF\n", script, re.S)[1]
        scores = {
            "panoptic_seg/PQ": 45.123,
            "panoptic_seg/PQ_th": 33.0,
            "panoptic_seg/PQ_st": 62.5,
            "segm/AP": 20.004,
            "sem_seg/mIoU": 71.25,
            "sem_seg/pACC": 90.0,
        }
        metrics = os.path.join(self.root, "metrics.json")
        with open(metrics, "w") as f:
            # Training rows first; the evaluation's row last.
            f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
            f.write(json.dumps({"iteration": 10, **scores}) + "\n")
        printed = subprocess.run(
            [sys.executable, "-", metrics, "semask_shapes_panoptic_val"],
            input=program,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertEqual(
            printed,
            "semask_shapes_panoptic_val: PQ 45.12, PQ_th 33.00, PQ_st 62.50, AP 20.00, "
            "mIoU 71.25\n",
        )

    def test_visualize_panoptic_predictions(self):
        register_semask_shapes_panoptic(self.root, splits=TINY, image_size=48)
        cfg = quickstart_cfg()
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(cfg), save_dir=self.root).save("model_final")
        tool = load_script("tools/visualize_predictions.py")
        argv = ["--config-file", CONFIG, "--dataset", "semask_shapes_panoptic_tinyval"]
        with mock.patch.object(
            Visualizer, "draw_panoptic_seg", autospec=True, side_effect=Visualizer.draw_panoptic_seg
        ) as draw:
            written = tool.main(
                argv + ["--num-images", "2", "--scale", "1", "OUTPUT_DIR", self.root]
            )
        # Ground truth and prediction of each of the 2 rows; the ground truth from the PNG.
        self.assertEqual(draw.call_count, 4)
        truth_ids, truth_segments = draw.call_args_list[0].args[1:3]
        record = DatasetCatalog.get("semask_shapes_panoptic_tinyval")[0]
        self.assertTrue(np.array_equal(truth_ids.numpy(), read_ids(record["pan_seg_file_name"])))
        self.assertEqual(truth_segments, record["segments_info"])
        with Image.open(written) as image:
            # 3 panels of 48 px with 2 gaps of 4; a title band of 16 over 2 rows with 1 gap.
            self.assertEqual(image.size, (3 * 48 + 2 * 4, 16 + 2 * 48 + 4))


if __name__ == "__main__":
    unittest.main()

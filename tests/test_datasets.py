"""Dataset registration, loading and file checks on fake trees; the datasets/ prepare scripts."""

import importlib
import importlib.util
import os
import unittest
from unittest import mock

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

import semask_d2  # noqa: F401  (registers the builtin datasets)
from semask_d2.data import register_sem_seg_dataset
from semask_d2.data.datasets import (
    builtin,
    register_all_ade20k,
    register_all_ade20k_full,
    register_all_cityscapes,
    register_all_coco_stuff_10k,
)
from semask_d2.data.file_checks import read_label_checked

import catalog_fixtures
from script_loader import load_script

ADE = ["ade20k_sem_seg_train", "ade20k_sem_seg_val"]
ADE_FULL = ["ade20k_full_sem_seg_train", "ade20k_full_sem_seg_val"]
COCO = ["coco_2017_train_stuff_10k_sem_seg", "coco_2017_test_stuff_10k_sem_seg"]
CITYSCAPES = [f"cityscapes_fine_sem_seg_{s}" for s in ("train", "val", "test")]
CUSTOM = "_test_custom_sem_seg"


def write(path, array, text=None, **save_args):
    """Save `array` (H, W) or (H, W, C) as an image file, or `text`, creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if text is not None:
        with open(path, "w") as f:
            f.write(text)
    else:
        Image.fromarray(array).save(path, **save_args)
    return path


def rgb(height=5, width=7, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def label(height=5, width=7, value=1, dtype=np.uint8):
    return np.full((height, width), value, dtype=dtype)


def loader_of(name):
    """The function registered for `name`, or None (DatasetCatalog.get would call it)."""
    return DatasetCatalog.data.get(name)


class CatalogTestCase(catalog_fixtures.CatalogTestCase):
    def assertDatasetError(self, name, *paths):
        """Loading `name` raises a one-line DatasetError naming every path in `paths`."""
        return super().assertDatasetError(name, *map(os.path.abspath, paths))


def make_ade20k(root, train=2, val=1):
    base = os.path.join(root, "ADEChallengeData2016")
    for split, count in (("training", train), ("validation", val)):
        for i in range(count):
            stem = f"ADE_{split[:5] if split == 'training' else 'val'}_{i:08d}"
            write(os.path.join(base, "images", split, stem + ".jpg"), rgb(5, 7 + i, i))
            ann = os.path.join(base, "annotations_detectron2", split, stem + ".png")
            write(ann, label(5, 7 + i, 149))
    return base


class TestADE20K(CatalogTestCase):
    NAMES = ADE

    def test_registration_and_loading(self):
        base = make_ade20k(self.root)
        register_all_ade20k(self.root)
        train = DatasetCatalog.get("ade20k_sem_seg_train")
        self.assertEqual(len(train), 2)
        self.assertEqual(len(DatasetCatalog.get("ade20k_sem_seg_val")), 1)
        first = train[0]
        self.assertEqual(
            first["file_name"], os.path.join(base, "images", "training", "ADE_train_00000000.jpg")
        )
        self.assertEqual(
            first["sem_seg_file_name"],
            os.path.join(base, "annotations_detectron2", "training", "ADE_train_00000000.png"),
        )
        self.assertEqual((train[1]["height"], train[1]["width"]), (5, 8))
        meta = MetadataCatalog.get("ade20k_sem_seg_train")
        self.assertEqual(len(meta.stuff_classes), 150)
        self.assertEqual(meta.stuff_classes[0], "wall")
        self.assertEqual(meta.stuff_classes[8], "window ")  # detectron2's spelling
        self.assertEqual(len(meta.stuff_colors), 150)
        self.assertEqual(meta.stuff_colors[0], [120, 120, 120])
        self.assertEqual((meta.ignore_label, meta.evaluator_type), (255, "sem_seg"))
        self.assertEqual(
            meta.sem_seg_root, os.path.join(base, "annotations_detectron2", "training")
        )

    def test_register_twice_replaces(self):
        register_all_ade20k(os.path.join(self.root, "a"))
        register_all_ade20k(os.path.join(self.root, "b"))
        image_root = MetadataCatalog.get("ade20k_sem_seg_val").image_root
        self.assertTrue(image_root.startswith(os.path.join(self.root, "b")))

    def test_missing_root(self):
        register_all_ade20k(self.root)
        self.assertDatasetError(
            "ade20k_sem_seg_train", os.path.join(self.root, "ADEChallengeData2016")
        )
        register_all_ade20k(os.path.join(self.root, "nowhere"))
        self.assertDatasetError("ade20k_sem_seg_val", os.path.join(self.root, "nowhere"))

    def test_missing_split_folder(self):
        base = os.path.join(self.root, "ADEChallengeData2016")
        write(os.path.join(base, "images", "training", "a.jpg"), rgb())
        register_all_ade20k(self.root)
        message = self.assertDatasetError(
            "ade20k_sem_seg_train", os.path.join(base, "annotations_detectron2")
        )
        self.assertIn("prepare_ade20k_sem_seg.py", message)

    def test_empty_split(self):
        base = make_ade20k(self.root, train=0, val=1)
        os.makedirs(os.path.join(base, "images", "training"))
        os.makedirs(os.path.join(base, "annotations_detectron2", "training"))
        register_all_ade20k(self.root)
        self.assertDatasetError("ade20k_sem_seg_train", os.path.join(base, "images", "training"))


class TestBadFiles(CatalogTestCase):
    """Header-level checks of the loader, on a custom dataset."""

    NAMES = [CUSTOM]

    def register(self, image_ext="jpg"):
        self.images = os.path.join(self.root, "images")
        self.labels = os.path.join(self.root, "labels")
        register_sem_seg_dataset(
            CUSTOM, self.images, self.labels, stuff_classes=["a", "b"], image_ext=image_ext
        )

    def test_image_without_label(self):
        self.register()
        write(os.path.join(self.images, "x.jpg"), rgb())
        write(os.path.join(self.images, "y.jpg"), rgb())
        write(os.path.join(self.labels, "x.png"), label())
        self.assertDatasetError(
            CUSTOM, os.path.join(self.images, "y.jpg"), os.path.join(self.labels, "y.png")
        )

    def test_label_without_image_is_skipped(self):
        self.register()
        write(os.path.join(self.images, "x.jpg"), rgb())
        write(os.path.join(self.labels, "x.png"), label())
        write(os.path.join(self.labels, "extra.png"), label())
        with self.assertLogs("semask_d2.data.datasets.sem_seg", "WARNING"):
            self.assertEqual(len(DatasetCatalog.get(CUSTOM)), 1)

    def test_rgb_and_rgba_labels(self):
        self.register()
        write(os.path.join(self.images, "x.jpg"), rgb())
        for channels in (3, 4):
            bad = write(os.path.join(self.labels, "x.png"), np.zeros((5, 7, channels), np.uint8))
            message = self.assertDatasetError(CUSTOM, bad)
            self.assertIn("single-channel", message)

    def test_palette_label_is_fine(self):
        self.register()
        write(os.path.join(self.images, "x.jpg"), rgb())
        palette = Image.fromarray(label(value=1)).convert("P")
        palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
        os.makedirs(self.labels)
        palette.save(os.path.join(self.labels, "x.png"))
        record = DatasetCatalog.get(CUSTOM)[0]
        self.assertEqual(Image.open(record["sem_seg_file_name"]).mode, "P")
        np.testing.assert_array_equal(read_label_checked(record["sem_seg_file_name"], 2, 255), 1)

    def test_size_mismatch(self):
        self.register()
        write(os.path.join(self.images, "x.jpg"), rgb(5, 7))
        bad = write(os.path.join(self.labels, "x.png"), label(5, 6))
        message = self.assertDatasetError(CUSTOM, bad, os.path.join(self.images, "x.jpg"))
        self.assertIn("6x5", message)

    def test_corrupt_image(self):
        self.register()
        os.makedirs(self.images)
        bad = os.path.join(self.images, "x.jpg")
        with open(bad, "wb") as f:
            f.write(b"not an image")
        write(os.path.join(self.labels, "x.png"), label())
        self.assertDatasetError(CUSTOM, bad)

    def test_grayscale_tiny_png_in_subfolders(self):
        self.register(image_ext="png")
        write(os.path.join(self.images, "sub", "x.png"), label(2, 1, 30))
        write(os.path.join(self.labels, "sub", "x.png"), label(2, 1, 255))
        (record,) = DatasetCatalog.get(CUSTOM)
        self.assertEqual((record["height"], record["width"]), (2, 1))
        self.assertEqual(len(MetadataCatalog.get(CUSTOM).stuff_colors), 2)

    def test_exif_rotation_swaps_header_size(self):
        self.register()
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 270: stored 7x5 displays as 5x7
        write(os.path.join(self.images, "x.jpg"), rgb(5, 7), exif=exif.tobytes())
        write(os.path.join(self.labels, "x.png"), label(7, 5))
        (record,) = DatasetCatalog.get(CUSTOM)
        self.assertEqual((record["height"], record["width"]), (7, 5))

    def test_colours_must_match_classes(self):
        with self.assertRaises(ValueError):
            register_sem_seg_dataset(CUSTOM, "i", "l", stuff_classes=["a"], stuff_colors=[])


class TestADE20KFull(CatalogTestCase):
    NAMES = ADE_FULL

    def test_16bit_labels(self):
        base = os.path.join(self.root, "ADE20K_2021_17_01")
        values = np.array([[0, 255, 300], [846, 65535, 65535]], dtype=np.uint16)
        for split in ("training", "validation"):
            write(os.path.join(base, "images_detectron2", split, "ADE_a.jpg"), rgb(2, 3))
            write(os.path.join(base, "annotations_detectron2", split, "ADE_a.tif"), values)
        register_all_ade20k_full(self.root)
        (record,) = DatasetCatalog.get("ade20k_full_sem_seg_val")
        self.assertTrue(record["sem_seg_file_name"].endswith("ADE_a.tif"))
        meta = MetadataCatalog.get("ade20k_full_sem_seg_val")
        self.assertEqual((len(meta.stuff_classes), len(meta.stuff_colors)), (847, 847))
        self.assertEqual(meta.ignore_label, 65535)
        read = read_label_checked(record["sem_seg_file_name"], 847, meta.ignore_label)
        np.testing.assert_array_equal(read, values)


class TestCocoStuff10k(CatalogTestCase):
    NAMES = COCO

    def test_registration_and_loading(self):
        base = os.path.join(self.root, "coco", "coco_stuff_10k")
        for split, count in (("train", 3), ("test", 2)):
            for i in range(count):
                name = f"COCO_train2014_{i:012d}"
                write(os.path.join(base, "images_detectron2", split, name + ".jpg"), rgb())
                write(os.path.join(base, "annotations_detectron2", split, name + ".png"), label())
        register_all_coco_stuff_10k(self.root)
        self.assertEqual(len(DatasetCatalog.get("coco_2017_train_stuff_10k_sem_seg")), 3)
        self.assertEqual(len(DatasetCatalog.get("coco_2017_test_stuff_10k_sem_seg")), 2)
        meta = MetadataCatalog.get("coco_2017_test_stuff_10k_sem_seg")
        self.assertEqual(len(meta.stuff_classes), 171)
        self.assertEqual(meta.stuff_classes[:2], ["person", "bicycle"])
        self.assertEqual(meta.stuff_colors[0], [220, 20, 60])
        self.assertTrue(all(len(c) == 3 for c in meta.stuff_colors))
        self.assertEqual(len(meta.stuff_colors), 171)
        self.assertEqual(meta.stuff_dataset_id_to_contiguous_id[1], 0)
        self.assertEqual(meta.stuff_dataset_id_to_contiguous_id[182], 170)


class TestCityscapes(CatalogTestCase):
    NAMES = CITYSCAPES

    def test_pairing_without_json(self):
        base = os.path.join(self.root, "cityscapes")
        for split, cities in (("train", ("aachen", "bochum")), ("val", ("lindau",))):
            for city in cities:
                for frame in range(2):
                    stem = f"{city}_000000_{frame:06d}"
                    folder = os.path.join(base, "leftImg8bit", split, city)
                    write(os.path.join(folder, stem + "_leftImg8bit.png"), rgb(4, 8))
                    gt = os.path.join(base, "gtFine", split, city)
                    write(os.path.join(gt, stem + "_gtFine_labelTrainIds.png"), label(4, 8, 18))
                    write(os.path.join(gt, stem + "_gtFine_labelIds.png"), label(4, 8, 33))
        register_all_cityscapes(self.root)
        train = DatasetCatalog.get("cityscapes_fine_sem_seg_train")
        self.assertEqual(len(train), 4)
        self.assertEqual(len(DatasetCatalog.get("cityscapes_fine_sem_seg_val")), 2)
        for record in train:
            stem = os.path.basename(record["file_name"])[: -len("_leftImg8bit.png")]
            self.assertEqual(
                os.path.basename(record["sem_seg_file_name"]), stem + "_gtFine_labelTrainIds.png"
            )
            self.assertEqual((record["height"], record["width"]), (4, 8))
        meta = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
        self.assertEqual(meta.evaluator_type, "cityscapes_sem_seg")
        self.assertEqual(meta.gt_dir, os.path.join(base, "gtFine", "val"))
        self.assertEqual(meta.image_dir, os.path.join(base, "leftImg8bit", "val"))
        self.assertEqual(len(meta.stuff_classes), 19)
        self.assertEqual(meta.stuff_colors[0], [128, 64, 128])
        self.assertEqual(len(meta.thing_classes), 8)
        # No test labels: a clear error naming the missing folder.
        self.assertDatasetError(
            "cityscapes_fine_sem_seg_test", os.path.join(base, "leftImg8bit", "test")
        )


class TestBuiltin(CatalogTestCase):
    NAMES = ADE + ADE_FULL + COCO + CITYSCAPES + ["semask_shapes_train", "semask_shapes_val"]

    def test_import_registers_ours_over_detectron2(self):
        for name in ("ade20k_sem_seg_train", "cityscapes_fine_sem_seg_val", COCO[0], ADE_FULL[0]):
            self.assertEqual(loader_of(name).__module__, "semask_d2.data.datasets.sem_seg")
            self.assertIn("stuff_colors", MetadataCatalog.get(name).as_dict())

    def test_environment_variable_is_expanded(self):
        # Every name the reload re-registers goes back to the import-time root afterwards.
        self.addCleanup(builtin.register_all_builtin)
        with mock.patch.dict(os.environ, {"DETECTRON2_DATASETS": "~/d2_data"}):
            self.assertEqual(builtin.default_root(), os.path.expanduser("~/d2_data"))
            importlib.reload(builtin)  # what importing semask_d2 runs
        expected = os.path.expanduser("~/d2_data/ADEChallengeData2016/images/training")
        self.assertEqual(MetadataCatalog.get("ade20k_sem_seg_train").image_root, expected)
        with mock.patch.dict(os.environ):
            os.environ.pop("DETECTRON2_DATASETS", None)
            self.assertEqual(builtin.default_root(), "datasets")


class TestPrepareScripts(CatalogTestCase):
    NAMES = ADE + ADE_FULL + COCO

    def test_ade20k_conversion(self):
        script = load_script("datasets/prepare_ade20k_sem_seg.py")
        raw = np.array([[0, 1, 150, 255]], dtype=np.uint8)
        np.testing.assert_array_equal(script.convert_label(raw), [[255, 0, 149, 254]])
        base = os.path.join(self.root, "ADEChallengeData2016")
        for split in ("training", "validation"):
            write(os.path.join(base, "images", split, "ADE_1.jpg"), rgb(1, 4))
            write(os.path.join(base, "annotations", split, "ADE_1.png"), raw)
        script.main(["--root", base])
        script.main(["--root", base])  # idempotent: keeps the outputs
        register_all_ade20k(self.root)
        (record,) = DatasetCatalog.get("ade20k_sem_seg_val")
        np.testing.assert_array_equal(
            np.asarray(Image.open(record["sem_seg_file_name"])), [[255, 0, 149, 254]]
        )
        with self.assertRaises(SystemExit) as ctx:
            script.main(["--root", os.path.join(self.root, "missing")])
        self.assertIn(os.path.join(self.root, "missing"), str(ctx.exception))

    def test_ade20k_full_conversion(self):
        script = load_script("datasets/prepare_ade20k_full_sem_seg.py")
        seg = np.zeros((2, 2, 3), np.uint8)
        seg[0, 0] = (20, 5, 0)  # 2 * 256 + 5 = 517
        seg[0, 1] = (110, 186, 9)  # 11 * 256 + 186 = 3002
        np.testing.assert_array_equal(script.decode_class_ids(seg), [[517, 3002], [0, 0]])
        lookup = script.build_lookup([{"ade_full_id": 517, "train_id": 300}])
        np.testing.assert_array_equal(
            script.to_train_ids(np.array([517, 3002, 0]), lookup), [300, 65535, 65535]
        )
        self.assertEqual(script.resized_size(1024, 768), (683, 512))
        self.assertIsNone(script.resized_size(700, 512))
        # End to end on a fake release: wall (ade_full_id 2978) -> train id 0.
        base = os.path.join(self.root, "ADE20K_2021_17_01")
        folder = os.path.join(base, "images", "ADE", "validation", "urban")
        write(os.path.join(folder, "ADE_val_1.jpg"), rgb(2, 2))
        seg[1, 1] = (2978 // 256 * 10, 2978 % 256, 0)
        write(os.path.join(folder, "ADE_val_1_seg.png"), seg)
        script.main(["--root", base])
        register_all_ade20k_full(self.root)
        (record,) = DatasetCatalog.get("ade20k_full_sem_seg_val")
        values = read_label_checked(record["sem_seg_file_name"], 847, 65535)
        self.assertEqual(values.dtype, np.uint16)
        self.assertEqual(values[1, 1], 0)
        self.assertEqual(values[0, 1], 65535)

    def test_coco_stuff_conversion(self):
        script = load_script("datasets/prepare_coco_stuff_10k_sem_seg.py")
        np.testing.assert_array_equal(
            script.convert_label(np.array([[1, 2, 172]])), [[255, 0, 170]]
        )
        with self.assertRaises(ValueError):
            script.convert_label(np.array([[0, 173]]))
        import scipy.io

        # End to end on a fake v1.0 tree (MATLAB v5 files, which scipy reads).
        base = os.path.join(self.root, "coco", "coco_stuff_10k")
        for split, name in (("train", "COCO_1"), ("test", "COCO_2")):
            write(os.path.join(base, "imageLists", split + ".txt"), None, text=name + "\n")
            write(os.path.join(base, "images", name + ".jpg"), rgb(1, 3))
            os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
            scipy.io.savemat(
                os.path.join(base, "annotations", name + ".mat"),
                {"S": np.array([[1, 2, 172]], dtype=np.uint16)},
            )
        script.main(["--root", base])
        register_all_coco_stuff_10k(self.root)
        (record,) = DatasetCatalog.get("coco_2017_test_stuff_10k_sem_seg")
        self.assertTrue(record["file_name"].endswith(os.path.join("test", "COCO_2.jpg")))
        np.testing.assert_array_equal(
            read_label_checked(record["sem_seg_file_name"], 171, 255), [[255, 0, 170]]
        )

    def test_cityscapes_conversion(self):
        script = load_script("datasets/prepare_cityscapes_sem_seg.py")
        ids = np.array([[0, 7, 33, 29]], dtype=np.uint8)
        lookup = script.build_lookup()
        np.testing.assert_array_equal(
            script.label_ids_to_train_ids(ids, lookup), [[255, 0, 18, 255]]
        )
        gt = os.path.join(self.root, "gtFine", "val", "lindau")
        write(os.path.join(gt, "lindau_1_2_gtFine_labelIds.png"), ids)
        script.main(["--root", self.root, "--from-label-ids"])
        out = os.path.join(gt, "lindau_1_2_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(np.asarray(Image.open(out)), [[255, 0, 18, 255]])
        if importlib.util.find_spec("cityscapesscripts") is None:
            with self.assertRaises(SystemExit) as ctx:
                script.main(["--root", self.root])
            self.assertIn("--from-label-ids", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()

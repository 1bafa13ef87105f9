"""Dataset mappers: augmentation, padding, per-class masks and file checks on tiny images."""

import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from semask_d2 import add_semask_config
from semask_d2.data import (
    DatasetError,
    MaskFormerSemanticDatasetMapper,
    SemanticTestDatasetMapper,
    build_dataset_mapper,
    register_sem_seg_dataset,
)

NAME = "_test_mapper_sem_seg"
IGNORE = 255


def write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def stripes():
    """(6, 8) label: rows 0-4 alternate class 0 / class 1 by column, row 5 ignored."""
    label = np.tile(np.array([0, 1], dtype=np.uint8), (6, 4))
    label[5] = IGNORE
    return label


class MapperTestCase(unittest.TestCase):
    """A registered 3-class dataset in a temporary folder and a config for it."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name
        self.register(3, IGNORE)
        torch.manual_seed(0)
        np.random.seed(0)

    def register(self, num_classes, ignore_label):
        register_sem_seg_dataset(
            NAME,
            os.path.join(self.root, "images"),
            os.path.join(self.root, "labels"),
            stuff_classes=[f"c{i}" for i in range(num_classes)],
            ignore_label=ignore_label,
            image_ext="png",
            gt_ext="tif",
        )
        self.addCleanup(DatasetCatalog.pop, NAME, None)
        self.addCleanup(MetadataCatalog.pop, NAME, None)

    def record(self, image, label, name="x"):
        """Write `image` and `label` and return the loader's record of them."""
        write(os.path.join(self.root, "images", name + ".png"), image)
        write(os.path.join(self.root, "labels", name + ".tif"), label)
        (record,) = [r for r in DatasetCatalog.get(NAME) if r["file_name"].endswith(name + ".png")]
        return record

    def cfg(self, min_size=6, crop=None, pad=-1, color_aug=False):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.DATASETS.TRAIN = (NAME,)
        cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
        cfg.INPUT.MAX_SIZE_TRAIN = 1000
        cfg.INPUT.MIN_SIZE_TEST = min_size
        cfg.INPUT.CROP.ENABLED = crop is not None
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = crop or [1, 1]
        cfg.INPUT.SIZE_DIVISIBILITY = pad
        cfg.INPUT.COLOR_AUG_SSD = color_aug
        return cfg


class TestMaskFormerSemanticDatasetMapper(MapperTestCase):
    def test_crop_pad_and_instances(self):
        image = np.random.RandomState(0).randint(0, 256, (6, 8, 3), dtype=np.uint8)
        record = self.record(image, stripes())
        mapper = build_dataset_mapper(self.cfg(crop=[6, 4], pad=8, color_aug=True), True)
        self.assertIsInstance(mapper, MaskFormerSemanticDatasetMapper)
        for _ in range(3):  # random crop positions and flips: same counts
            out = mapper(record)
            self.assertEqual(tuple(out["image"].shape), (3, 8, 8))
            self.assertEqual(out["image"].dtype, torch.uint8)
            self.assertTrue((out["image"][:, :, 4:] == 128).all())
            self.assertTrue((out["image"][:, 6:] == 128).all())
            sem_seg = out["sem_seg"]
            self.assertEqual((sem_seg.dtype, tuple(sem_seg.shape)), (torch.int64, (8, 8)))
            self.assertEqual(int((sem_seg == IGNORE).sum()), 64 - 20)
            instances = out["instances"]
            self.assertEqual(instances.image_size, (8, 8))
            self.assertEqual(instances.gt_classes.tolist(), [0, 1])
            self.assertEqual(instances.gt_classes.dtype, torch.int64)
            self.assertEqual(tuple(instances.gt_masks.shape), (2, 8, 8))
            self.assertEqual(instances.gt_masks.sum((1, 2)).tolist(), [10, 10])
            self.assertEqual((out["height"], out["width"]), (6, 8))

    def test_all_ignored_label_gives_empty_masks(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), np.full((6, 8), IGNORE, np.uint8))
        out = build_dataset_mapper(self.cfg(pad=10), True)(record)
        self.assertEqual(tuple(out["instances"].gt_masks.shape), (0, 10, 10))
        self.assertEqual(tuple(out["instances"].gt_classes.shape), (0,))

    def test_grayscale_and_tiny_images(self):
        record = self.record(np.full((5, 7), 50, np.uint8), np.full((5, 7), 2, np.uint8))
        out = build_dataset_mapper(self.cfg(min_size=5, crop=[4, 4], pad=16), True)(record)
        self.assertEqual(tuple(out["image"].shape), (3, 16, 16))
        self.assertTrue((out["image"][:, :4, :4] == 50).all())
        self.assertEqual(out["instances"].gt_classes.tolist(), [2])
        self.assertEqual(out["instances"].gt_masks.sum().item(), 16)
        # Upscaled, no crop, no padding.
        out = build_dataset_mapper(self.cfg(min_size=10), True)(record)
        self.assertEqual(tuple(out["sem_seg"].shape), (10, 14))

    def test_16bit_labels_keep_their_values(self):
        self.register(847, 65535)
        label = np.full((6, 8), 65535, np.uint16)
        label[:2] = 300
        label[2:4, :3] = 846
        record = self.record(np.zeros((6, 8, 3), np.uint8), label)
        cfg = self.cfg(min_size=12, crop=[12, 16], pad=16)
        # The category-area constraint must skip 65535, not 255.
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
        mapper = build_dataset_mapper(cfg, True)
        self.assertEqual(mapper.augmentations.augs[1].ignored_category, 65535)
        out = mapper(record)
        sem_seg = out["sem_seg"]
        self.assertEqual(out["instances"].gt_classes.tolist(), [300, 846])
        self.assertEqual(out["instances"].gt_masks.sum((1, 2)).tolist(), [4 * 16, 4 * 6])
        self.assertEqual(int((sem_seg == 65535).sum()), 16 * 16 - 4 * 16 - 4 * 6)

    def test_label_value_outside_classes(self):
        label = stripes()
        label[0, 0] = 7
        record = self.record(np.zeros((6, 8, 3), np.uint8), label)
        with self.assertRaises(DatasetError) as ctx:
            build_dataset_mapper(self.cfg(), True)(record)
        message = str(ctx.exception)
        self.assertIn(record["sem_seg_file_name"], message)
        self.assertIn("7", message)
        self.assertNotIn("\n", message)

    def test_truncated_image(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        with open(record["file_name"], "rb") as f:
            data = f.read()
        with open(record["file_name"], "wb") as f:
            f.write(data[: len(data) // 2])
        with self.assertRaises(DatasetError) as ctx:
            build_dataset_mapper(self.cfg(), True)(record)
        self.assertIn(record["file_name"], str(ctx.exception))

    def test_rgb_label_of_a_foreign_record(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        record["sem_seg_file_name"] = write(
            os.path.join(self.root, "rgb.png"), np.zeros((6, 8, 3), np.uint8)
        )
        with self.assertRaises(DatasetError) as ctx:
            build_dataset_mapper(self.cfg(), True)(record)
        self.assertIn("rgb.png", str(ctx.exception))

    def test_image_larger_than_padding(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        with self.assertRaises(ValueError):
            build_dataset_mapper(self.cfg(pad=4), True)(record)

    def test_training_sets_must_share_classes(self):
        cfg = self.cfg()
        cfg.DATASETS.TRAIN = (NAME, "ade20k_sem_seg_train")
        with self.assertRaises(ValueError):
            build_dataset_mapper(cfg, True)

    def test_explicit_arguments(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        mapper = MaskFormerSemanticDatasetMapper(
            augmentations=[],
            image_format="RGB",
            num_classes=3,
            ignore_label=IGNORE,
            size_divisibility=-1,
        )
        torch.testing.assert_close(mapper(record)["sem_seg"], torch.as_tensor(stripes()).long())
        with self.assertRaises(ValueError):
            MaskFormerSemanticDatasetMapper(self.cfg(), is_train=False)


class TestSemanticTestDatasetMapper(MapperTestCase):
    def test_image_only_at_test_size(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        mapper = build_dataset_mapper(self.cfg(min_size=12), False)
        self.assertIsInstance(mapper, SemanticTestDatasetMapper)
        out = mapper(record)
        self.assertEqual(tuple(out["image"].shape), (3, 12, 16))
        self.assertEqual((out["height"], out["width"]), (6, 8))
        self.assertNotIn("sem_seg_file_name", out)
        self.assertNotIn("sem_seg", out)
        self.assertIn("sem_seg_file_name", record)  # the input record is untouched

    def test_corrupt_image(self):
        record = self.record(np.zeros((6, 8, 3), np.uint8), stripes())
        with open(record["file_name"], "wb") as f:
            f.write(b"\x89PNG garbage")
        with self.assertRaises(DatasetError) as ctx:
            build_dataset_mapper(self.cfg(), False)(record)
        self.assertIn(record["file_name"], str(ctx.exception))

    def test_unknown_mapper_name(self):
        cfg = self.cfg()
        cfg.INPUT.DATASET_MAPPER_NAME = "no_such_mapper"
        with self.assertRaises(KeyError):
            build_dataset_mapper(cfg, True)


if __name__ == "__main__":
    unittest.main()

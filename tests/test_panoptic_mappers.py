"""
Panoptic and instance training mappers on hand-made 6x8 records: targets, crowd handling,
padding, the prior loss's labels (from a file or derived) and one-line errors for bad input.
"""

import os
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from semask_d2 import add_semask_config
from semask_d2.data import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    DatasetError,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    SemanticTestDatasetMapper,
    build_dataset_mapper,
)
from semask_d2.data.dataset_mappers.semantic_targets import (
    labels_from_masks,
    labels_from_panoptic,
)

NAME = "_test_panoptic_mappers"
X = 255  # ignore value

# The panoptic record: segment ids that use all three colour channels (id = R + 256 G + 65536 B).
SKY, CAR_1, CAR_2, CROWD, UNSEEN = 10 + 256 * 3, 5 + 65536 * 2, 21, 30, 40
SEGMENT_IDS = np.array(
    [[SKY] * 8] * 2
    + [[CAR_1] * 3 + [CAR_2] * 3 + [CROWD] * 2] * 2
    + [[CAR_1] * 3 + [CAR_2] * 3 + [0] * 2] * 2
)
# Classes 0 "car" and 1 "person" are things, 3 "sky" is stuff; UNSEEN has no pixels.
SEGMENTS_INFO = [
    {"id": SKY, "category_id": 3, "isthing": False, "iscrowd": 0},
    {"id": CAR_1, "category_id": 0, "isthing": True, "iscrowd": 0},
    {"id": CAR_2, "category_id": 0, "isthing": True, "iscrowd": 0},
    {"id": CROWD, "category_id": 1, "isthing": True, "iscrowd": 1},
    {"id": UNSEEN, "category_id": 1, "isthing": True, "iscrowd": 0},
]
# The crowd keeps its class; void is ignored.
PANOPTIC_LABELS = np.array(
    [[3] * 8] * 2 + [[0] * 6 + [1, 1]] * 2 + [[0] * 6 + [X, X]] * 2, dtype=np.int64
)
PANOPTIC_CLASSES = [3, 0, 0, 1]
PANOPTIC_MASKS = np.stack([SEGMENT_IDS == i for i in (SKY, CAR_1, CAR_2, UNSEEN)])


def box_mask(rows, cols):
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


# The instance record. PERSON overlaps CAR (ambiguous pixels) and CAR_TOO overlaps CAR (still
# car); the crowd covers the last row; EMPTY has no pixels.
CAR = box_mask((0, 3), (0, 4))  # polygon
PERSON = box_mask((2, 5), (2, 6))  # compressed RLE
CAR_TOO = box_mask((0, 2), (3, 7))  # uncompressed RLE
PEOPLE = box_mask((5, 6), (0, 8))  # crowd, compressed RLE
EMPTY = box_mask((0, 0), (0, 0))
INSTANCE_LABELS = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, X],
        [0, 0, 0, 0, 0, 0, 0, X],
        [0, 0, X, X, 1, 1, X, X],
        [X, X, 1, 1, 1, 1, X, X],
        [X, X, 1, 1, 1, 1, X, X],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    dtype=np.int64,
)
INSTANCE_CLASSES = [0, 1, 0, 1]
INSTANCE_MASKS = np.stack([CAR, PERSON, CAR_TOO, EMPTY]).astype(bool)


def rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask))
    encoded["counts"] = encoded["counts"].decode("ascii")  # as load_coco_json gives it
    return encoded


def annotation(segmentation, category_id, iscrowd=0):
    # The box is not read by the mappers.
    return {
        "bbox": [0, 0, 1, 1],
        "bbox_mode": 1,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
    }


def id_colors(segment_ids):
    """(H, W) ids -> (H, W, 3) uint8 panoptic PNG colours."""
    return np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1).astype(
        np.uint8
    )


def write(path, array):
    Image.fromarray(array).save(path)
    return path


class TestSemanticTargets(unittest.TestCase):
    def test_labels_from_masks(self):
        a = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
        b = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)  # same class
        c = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1]], dtype=np.uint8)  # other class
        labels = labels_from_masks([a, b, c], [2, 2, 5], (3, 4), X)
        expected = [[2, 2, 2, X], [2, X, 5, 5], [X, X, X, 5]]
        np.testing.assert_array_equal(labels, expected)
        self.assertEqual(labels.dtype, np.int64)
        # The order of the masks does not matter.
        np.testing.assert_array_equal(labels_from_masks([c, b, a], [5, 2, 2], (3, 4), X), labels)

    def test_labels_from_masks_without_masks(self):
        np.testing.assert_array_equal(labels_from_masks([], [], (2, 3), 7), np.full((2, 3), 7))

    def test_instance_record_rules(self):
        masks = [CAR, PERSON, CAR_TOO, PEOPLE]
        labels = labels_from_masks(masks, [0, 1, 0, 1], (6, 8), X)
        np.testing.assert_array_equal(labels, INSTANCE_LABELS)

    def test_labels_from_panoptic(self):
        labels = labels_from_panoptic(SEGMENT_IDS, SEGMENTS_INFO, X)
        np.testing.assert_array_equal(labels, PANOPTIC_LABELS)
        # Ids outside segments_info are ignored like void (the mappers reject them earlier).
        labels = labels_from_panoptic(SEGMENT_IDS, SEGMENTS_INFO[1:], 254)
        self.assertEqual(labels[0, 0], 254)


class MapperTestCase(unittest.TestCase):
    """A 4-class training-set name with metadata, and the two records in a temporary folder."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name
        self.set_metadata(X)
        np.random.seed(0)
        torch.manual_seed(0)
        self.image = np.random.RandomState(0).randint(0, 256, (6, 8, 3), dtype=np.uint8)
        # Without height/width, as detectron2's panoptic loaders give it.
        self.panoptic = {
            "file_name": write(os.path.join(self.root, "a.png"), self.image),
            "image_id": "a",
            "pan_seg_file_name": write(
                os.path.join(self.root, "a_pan.png"), id_colors(SEGMENT_IDS)
            ),
            "segments_info": [dict(s) for s in SEGMENTS_INFO],
        }
        uncompressed = {"size": [6, 8], "counts": [18, 2, 4, 2, 4, 2, 4, 2, 10]}  # CAR_TOO
        self.instance = {
            "file_name": self.panoptic["file_name"],
            "image_id": "a",
            "height": 6,
            "width": 8,
            "annotations": [
                annotation([[0, 0, 4, 0, 4, 3, 0, 3]], 0),
                annotation(rle(PERSON), 1),
                annotation(uncompressed, 0),
                annotation(rle(PEOPLE), 1, iscrowd=1),
                annotation(rle(EMPTY), 1),
            ],
        }

    def set_metadata(self, ignore_label):
        MetadataCatalog.pop(NAME, None)
        self.addCleanup(MetadataCatalog.pop, NAME, None)
        MetadataCatalog.get(NAME).set(
            thing_classes=["car", "person"],
            stuff_classes=["car", "person", "road", "sky"],
            ignore_label=ignore_label,
        )

    def cfg(self, mapper_name, crop=None, pad=-1):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.DATASETS.TRAIN = (NAME,)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
        cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        cfg.INPUT.FORMAT = "RGB"
        cfg.INPUT.MIN_SIZE_TRAIN = (6,)
        cfg.INPUT.MAX_SIZE_TRAIN = 1000
        cfg.INPUT.MIN_SIZE_TEST = 12
        cfg.INPUT.CROP.ENABLED = crop is not None
        cfg.INPUT.CROP.TYPE = "absolute"
        cfg.INPUT.CROP.SIZE = crop or [1, 1]
        cfg.INPUT.SIZE_DIVISIBILITY = pad
        # Large-scale jitter that keeps the image as it is: scale 1 into an 8x8 square.
        cfg.INPUT.IMAGE_SIZE = 8
        cfg.INPUT.MIN_SCALE = cfg.INPUT.MAX_SCALE = 1.0
        cfg.INPUT.RANDOM_FLIP = "none"
        return cfg

    def mapper(self, mapper_class, augmentations=(), pad=-1):
        return mapper_class(
            augmentations=list(augmentations),
            image_format="RGB",
            num_classes=4,
            ignore_label=X,
            size_divisibility=pad,
        )

    def assert_padded_output(self, out, labels, classes, masks, size=8):
        """`out` is the record's 6x8 image with `labels`, `classes`, `masks`, padded to size."""
        image = out["image"]
        self.assertEqual((image.dtype, tuple(image.shape)), (torch.uint8, (3, size, size)))
        np.testing.assert_array_equal(image[:, :6, :8].numpy(), self.image.transpose(2, 0, 1))
        self.assertTrue((image[:, 6:] == 128).all() and (image[:, :, 8:] == 128).all())
        sem_seg = out["sem_seg"]
        self.assertEqual((sem_seg.dtype, tuple(sem_seg.shape)), (torch.int64, (size, size)))
        np.testing.assert_array_equal(sem_seg[:6, :8].numpy(), labels)
        self.assertTrue((sem_seg[6:] == X).all() and (sem_seg[:, 8:] == X).all())
        instances = out["instances"]
        self.assertEqual(instances.image_size, (size, size))
        self.assertEqual(instances.gt_classes.dtype, torch.int64)
        self.assertEqual(instances.gt_classes.tolist(), classes)
        gt_masks = instances.gt_masks
        self.assertEqual(gt_masks.dtype, torch.bool)
        self.assertEqual(tuple(gt_masks.shape), (len(classes), size, size))
        np.testing.assert_array_equal(gt_masks[:, :6, :8].numpy(), masks)
        self.assertFalse(gt_masks[:, 6:].any() or gt_masks[:, :, 8:].any())

    def assert_random_flips(self, mapper, record, void_if_flipped, labels, classes, masks):
        """
        Of six outputs of `mapper` (whose only random step is a horizontal flip), some are
        flipped and some not; each is `assert_padded_output` of (`labels`, `classes`, `masks`)
        once unflipped. A flipped output is told by the label pixel `void_if_flipped` (y, x).
        """
        flips = set()
        for _ in range(6):
            out = mapper(record)
            flipped = bool(out["sem_seg"][void_if_flipped] == X)
            flips.add(flipped)
            if flipped:
                for key in ("image", "sem_seg"):
                    out[key][..., :8] = out[key][..., :8].flip(-1)
                out["instances"].gt_masks[..., :8] = out["instances"].gt_masks[..., :8].flip(-1)
            self.assert_padded_output(out, labels, classes, masks)
        self.assertEqual(flips, {False, True})

    def assert_one_line_error(self, mapper, record, *parts):
        with self.assertRaises(DatasetError) as ctx:
            mapper(record)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        for part in parts:
            self.assertIn(str(part), message)


class TestMaskFormerPanopticDatasetMapper(MapperTestCase):
    def test_targets_labels_and_padding(self):
        out = self.mapper(MaskFormerPanopticDatasetMapper, pad=8)(self.panoptic)
        self.assert_padded_output(out, PANOPTIC_LABELS, PANOPTIC_CLASSES, PANOPTIC_MASKS)
        self.assertNotIn("gt_boxes", out["instances"]._fields)
        # The training loader's aspect-ratio grouping reads the size from the mapped dict.
        self.assertEqual((out["height"], out["width"]), (6, 8))
        self.assertNotIn("height", self.panoptic)  # input untouched
        self.assertEqual(self.panoptic["segments_info"], SEGMENTS_INFO)

    def test_flip_moves_image_labels_and_masks_together(self):
        mapper = self.mapper(MaskFormerPanopticDatasetMapper, [T.RandomFlip(prob=1.0)])
        out = mapper(self.panoptic)
        np.testing.assert_array_equal(out["image"].numpy(), self.image[:, ::-1].transpose(2, 0, 1))
        np.testing.assert_array_equal(out["sem_seg"].numpy(), PANOPTIC_LABELS[:, ::-1])
        np.testing.assert_array_equal(out["instances"].gt_masks.numpy(), PANOPTIC_MASKS[..., ::-1])

    def test_from_config_with_full_crop(self):
        mapper = build_dataset_mapper(self.cfg("mask_former_panoptic", crop=[6, 8], pad=8), True)
        self.assertIsInstance(mapper, MaskFormerPanopticDatasetMapper)
        # Void moves from the right to the left.
        self.assert_random_flips(
            mapper, self.panoptic, (4, 0), PANOPTIC_LABELS, PANOPTIC_CLASSES, PANOPTIC_MASKS
        )

    def test_semantic_file_gives_the_labels(self):
        labels = np.full((6, 8), 2, dtype=np.uint8)
        labels[0] = X
        self.panoptic["sem_seg_file_name"] = write(os.path.join(self.root, "a_sem.png"), labels)
        out = self.mapper(MaskFormerPanopticDatasetMapper, pad=8)(self.panoptic)
        self.assert_padded_output(out, labels, PANOPTIC_CLASSES, PANOPTIC_MASKS)

    def test_ignore_label_from_metadata(self):
        self.set_metadata(254)
        mapper = build_dataset_mapper(self.cfg("mask_former_panoptic", pad=8), True)
        sem_seg = mapper(self.panoptic)["sem_seg"]
        self.assertEqual(int((sem_seg == 254).sum()), 4 + 16)  # void + padding
        self.assertEqual(int((sem_seg == X).sum()), 0)

    def test_missing_and_unreadable_png(self):
        mapper = self.mapper(MaskFormerPanopticDatasetMapper)
        path = self.panoptic["pan_seg_file_name"]
        os.remove(path)
        self.assert_one_line_error(mapper, self.panoptic, path, "not found")
        with open(path, "wb") as f:
            f.write(b"\x89PNG garbage")
        self.assert_one_line_error(mapper, self.panoptic, path, "cannot read")
        write(path, SEGMENT_IDS.astype(np.uint8))
        self.assert_one_line_error(mapper, self.panoptic, path, "is a L image")

    def test_segment_id_missing_from_segments_info(self):
        self.panoptic["segments_info"] = [s for s in SEGMENTS_INFO if s["id"] != SKY]
        mapper = self.mapper(MaskFormerPanopticDatasetMapper)
        self.assert_one_line_error(mapper, self.panoptic, self.panoptic["pan_seg_file_name"], SKY)

    def test_class_outside_the_classes(self):
        self.panoptic["segments_info"][1]["category_id"] = 4
        mapper = self.mapper(MaskFormerPanopticDatasetMapper)
        self.assert_one_line_error(mapper, self.panoptic, "a_pan.png", "category_id 4", "0..3")

    def test_record_of_another_type_names_its_mapper(self):
        mapper = self.mapper(MaskFormerPanopticDatasetMapper)
        self.assert_one_line_error(
            mapper, self.instance, "a.png", "pan_seg_file_name", "mask_former_instance"
        )
        semantic = {"file_name": self.instance["file_name"], "sem_seg_file_name": "a_sem.png"}
        self.assert_one_line_error(mapper, semantic, "a.png", "mask_former_semantic")


class TestCOCOPanopticLSJDatasetMapper(MapperTestCase):
    def test_targets_boxes_and_padding(self):
        mapper = build_dataset_mapper(self.cfg("coco_panoptic_lsj"), True)
        self.assertIsInstance(mapper, COCOPanopticLSJDatasetMapper)
        out = mapper(self.panoptic)
        self.assert_padded_output(out, PANOPTIC_LABELS, PANOPTIC_CLASSES, PANOPTIC_MASKS)
        boxes = out["instances"].gt_boxes.tensor.tolist()
        self.assertEqual(boxes, [[0, 0, 8, 2], [0, 2, 3, 6], [3, 2, 6, 6], [0, 0, 0, 0]])

    def test_semantic_file_is_used(self):
        labels = np.full((6, 8), 1, dtype=np.uint8)
        self.panoptic["sem_seg_file_name"] = write(os.path.join(self.root, "a_sem.png"), labels)
        out = build_dataset_mapper(self.cfg("coco_panoptic_lsj"), True)(self.panoptic)
        self.assert_padded_output(out, labels, PANOPTIC_CLASSES, PANOPTIC_MASKS)

    def test_random_jitter_keeps_labels_and_masks_aligned(self):
        cfg = self.cfg("coco_panoptic_lsj")
        cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.25, 2.0
        cfg.INPUT.RANDOM_FLIP = "horizontal"
        mapper = build_dataset_mapper(cfg, True)
        sizes = set()
        for _ in range(10):
            out = mapper(self.panoptic)
            self.assertEqual(tuple(out["image"].shape), (3, 8, 8))
            sem_seg, instances = out["sem_seg"], out["instances"]
            for cls, mask in zip(instances.gt_classes, instances.gt_masks):
                self.assertTrue((sem_seg[mask] == cls).all())
            self.assertLessEqual(int(instances.gt_masks.sum(0).max()), 1)  # disjoint
            padding = out["image"].eq(128).all(0) & sem_seg.eq(X)
            sizes.add(int((~padding).sum()))
        self.assertGreater(len(sizes), 2)  # the scale varies


class TestMaskFormerInstanceDatasetMapper(MapperTestCase):
    def test_targets_labels_and_padding(self):
        out = self.mapper(MaskFormerInstanceDatasetMapper, pad=8)(self.instance)
        self.assert_padded_output(out, INSTANCE_LABELS, INSTANCE_CLASSES, INSTANCE_MASKS)
        self.assertNotIn("annotations", out)
        self.assertEqual(len(self.instance["annotations"]), 5)  # input untouched

    def test_from_config_with_full_crop(self):
        mapper = build_dataset_mapper(self.cfg("mask_former_instance", crop=[6, 8], pad=8), True)
        self.assertIsInstance(mapper, MaskFormerInstanceDatasetMapper)
        self.assert_random_flips(
            mapper, self.instance, (0, 0), INSTANCE_LABELS, INSTANCE_CLASSES, INSTANCE_MASKS
        )

    def test_upscaled_masks_follow_the_image(self):
        cfg = self.cfg("mask_former_instance")
        cfg.INPUT.MIN_SIZE_TRAIN = (12,)
        mapper = build_dataset_mapper(cfg, True)
        mapper.augmentations = T.AugmentationList(mapper.augmentations.augs[:1])  # no flip
        out = mapper(self.instance)
        upscaled = INSTANCE_MASKS.repeat(2, axis=1).repeat(2, axis=2)
        np.testing.assert_array_equal(out["instances"].gt_masks.numpy(), upscaled)
        np.testing.assert_array_equal(
            out["sem_seg"].numpy(), INSTANCE_LABELS.repeat(2, axis=0).repeat(2, axis=1)
        )

    def test_semantic_file_gives_the_labels(self):
        labels = np.full((6, 8), 3, dtype=np.uint8)
        self.instance["sem_seg_file_name"] = write(os.path.join(self.root, "a_sem.png"), labels)
        out = self.mapper(MaskFormerInstanceDatasetMapper, pad=8)(self.instance)
        self.assert_padded_output(out, labels, INSTANCE_CLASSES, INSTANCE_MASKS)

    def test_no_annotations(self):
        mapper = self.mapper(MaskFormerInstanceDatasetMapper)
        self.assert_one_line_error(
            mapper, self.panoptic, "a.png", "no annotations", "mask_former_panoptic"
        )
        record = {"file_name": self.instance["file_name"]}
        self.assert_one_line_error(mapper, record, "a.png", "register_coco_instances")

    def test_empty_annotation_list(self):
        self.instance["annotations"] = []
        out = self.mapper(MaskFormerInstanceDatasetMapper, pad=8)(self.instance)
        self.assert_padded_output(out, np.full((6, 8), X), [], np.zeros((0, 6, 8), bool))

    def test_bad_annotations(self):
        mapper = self.mapper(MaskFormerInstanceDatasetMapper)
        annotations = self.instance["annotations"]
        del annotations[1]["segmentation"]
        self.assert_one_line_error(mapper, self.instance, "a.png", "no segmentation")
        annotations[1]["segmentation"] = rle(np.zeros((8, 6), np.uint8))
        self.assert_one_line_error(mapper, self.instance, "a.png", "6x8 mask", "8x6")
        annotations[1]["segmentation"] = rle(PERSON)
        annotations[1]["category_id"] = 4
        self.assert_one_line_error(mapper, self.instance, "a.png", "category_id 4", "NUM_CLASSES")

    def test_missing_image_and_wrong_size(self):
        mapper = self.mapper(MaskFormerInstanceDatasetMapper)
        self.instance["height"] = 7
        self.assert_one_line_error(mapper, self.instance, "a.png", "8x6", "8x7")
        os.remove(self.instance["file_name"])
        self.assert_one_line_error(mapper, self.instance, self.instance["file_name"])


class TestCOCOInstanceLSJDatasetMapper(MapperTestCase):
    def test_boxes_and_empty_instances_dropped(self):
        mapper = build_dataset_mapper(self.cfg("coco_instance_lsj"), True)
        self.assertIsInstance(mapper, COCOInstanceLSJDatasetMapper)
        out = mapper(self.instance)
        self.assert_padded_output(out, INSTANCE_LABELS, [0, 1, 0], INSTANCE_MASKS[:3])
        boxes = out["instances"].gt_boxes.tensor.tolist()
        self.assertEqual(boxes, [[0, 0, 4, 3], [2, 2, 6, 5], [3, 0, 7, 2]])

    def test_random_jitter_keeps_labels_and_masks_aligned(self):
        cfg = self.cfg("coco_instance_lsj")
        cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE = 0.5, 3.0
        cfg.INPUT.RANDOM_FLIP = "vertical"
        mapper = build_dataset_mapper(cfg, True)
        for _ in range(8):
            out = mapper(self.instance)
            sem_seg, instances = out["sem_seg"], out["instances"]
            self.assertTrue(instances.gt_masks.flatten(1).any(1).all())
            for cls, mask in zip(instances.gt_classes, instances.gt_masks):
                self.assertTrue(((sem_seg[mask] == cls) | (sem_seg[mask] == X)).all())


class TestRegistryEntries(MapperTestCase):
    def test_inference_mappers_read_the_image_only(self):
        for name, record in (
            ("mask_former_panoptic", self.panoptic),
            ("coco_panoptic_lsj", self.panoptic),
            ("mask_former_instance", self.instance),
            ("coco_instance_lsj", self.instance),
        ):
            mapper = build_dataset_mapper(self.cfg(name), False)
            self.assertIsInstance(mapper, SemanticTestDatasetMapper, name)
            out = mapper(record)
            self.assertEqual(tuple(out["image"].shape), (3, 12, 16), name)
            self.assertEqual((out["height"], out["width"]), (6, 8), name)
            self.assertNotIn("instances", out, name)
            self.assertNotIn("sem_seg", out, name)

    def test_training_mappers_refuse_inference(self):
        for mapper_class in (MaskFormerPanopticDatasetMapper, MaskFormerInstanceDatasetMapper):
            with self.assertRaises(ValueError):
                mapper_class(self.cfg("mask_former_panoptic"), is_train=False)


if __name__ == "__main__":
    unittest.main()

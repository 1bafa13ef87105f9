"""
Panoptic and instance registrations (ADE20K, COCO, Cityscapes) on fake trees: records, metadata,
the one-line errors, and the datasets/ scripts that prepare them.
"""

import contextlib
import io
import json
import os
import shutil
from unittest import mock

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
from detectron2.structures import BoxMode

import semask_d2  # noqa: F401  (registers the builtin datasets)
from semask_d2.data.datasets import (
    ade20k_instance_metadata,
    coco_panoptic_metadata,
    register_all_ade20k_instance,
    register_all_ade20k_panoptic,
    register_all_cityscapes_instance,
    register_all_cityscapes_panoptic,
    register_all_coco_panoptic,
)
from panopticapi.utils import id2rgb, rgb2id

from catalog_fixtures import CatalogTestCase
from script_loader import load_script

ADE_PANOPTIC = ["ade20k_panoptic_train", "ade20k_panoptic_val"]
ADE_INSTANCE = ["ade20k_instance_train", "ade20k_instance_val"]
COCO_PANOPTIC = ["coco_2017_train_panoptic_with_sem_seg", "coco_2017_val_panoptic_with_sem_seg"]
CITYSCAPES_PANOPTIC = ["cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val"]
CITYSCAPES_INSTANCE = [f"cityscapes_fine_instance_seg_{s}" for s in ("train", "val", "test")]
USER = ["_test_user_panoptic", "_test_user_instances"]

ADE_ID = "ADE_val_00000001"
# (2, 3) panoptic segment ids: wall (stuff, id 1), a bed (thing 7, id 2), a flag (thing 149).
ADE_SEGMENT_IDS = [[1, 1, 2], [1, 300, 300]]
ADE_SEGMENTS = [
    {"id": 1, "category_id": 0, "area": 3, "bbox": [0, 0, 2, 2], "iscrowd": 0},
    {"id": 2, "category_id": 7, "area": 1, "bbox": [2, 0, 1, 1], "iscrowd": 0},
    {"id": 300, "category_id": 149, "area": 2, "bbox": [1, 1, 2, 1], "iscrowd": 0},
]
ADE_THING_IDS = [7, 8, 10, 12, 14, 15, 18, 19, 20, 22]  # the first ten of the 100

CITY_ID = "frankfurt_000000_000294"
# (3, 4) Cityscapes instanceIds: road (7), a car group region (26: crowd), persons 24000 and
# 24001, a caravan (29000: ignoreInEval), unlabeled (0), a bicycle (33000).
INSTANCE_IDS = [
    [7, 7, 24000, 24000],
    [26, 26, 24001, 29000],
    [0, 7, 33000, 33000],
]


def write(path, array):
    """Save `array` as an image file, creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)
    return path


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def read_json(path):
    with open(path) as f:
        return json.load(f)


def rgb(height, width):
    return np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)


def rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def loader_module(name):
    return getattr(DatasetCatalog.data[name], "__module__", "")


class TestADE20KPanoptic(CatalogTestCase):
    NAMES = ADE_PANOPTIC

    def setUp(self):
        super().setUp()
        self.base = os.path.join(self.root, "ADEChallengeData2016")
        self.image = write(self.path("images", "validation", ADE_ID + ".jpg"), rgb(2, 3))
        self.png = write(
            self.path("ade20k_panoptic_val", ADE_ID + ".png"), id2rgb(np.array(ADE_SEGMENT_IDS))
        )
        self.label = write(
            self.path("annotations_detectron2", "validation", ADE_ID + ".png"),
            np.array([[0, 0, 7], [0, 149, 149]], np.uint8),
        )
        self.json = self.path("ade20k_panoptic_val.json")
        self.write_json()
        register_all_ade20k_panoptic(self.root)

    def path(self, *parts):
        return os.path.join(self.base, *parts)

    def write_json(self, segments=ADE_SEGMENTS, image_id=ADE_ID):
        write_json(
            self.json,
            {
                "images": [{"id": ADE_ID, "file_name": ADE_ID + ".jpg", "width": 3, "height": 2}],
                "annotations": [
                    {"image_id": image_id, "file_name": ADE_ID + ".png", "segments_info": segments}
                ],
                "categories": [],
            },
        )

    def test_record(self):
        (record,) = DatasetCatalog.get("ade20k_panoptic_val")
        self.assertEqual(
            record,
            {
                "file_name": self.image,
                "image_id": ADE_ID,
                "pan_seg_file_name": self.png,
                "sem_seg_file_name": self.label,
                "height": 2,
                "width": 3,
                "segments_info": [
                    {**ADE_SEGMENTS[0], "isthing": False},
                    {**ADE_SEGMENTS[1], "isthing": True},
                    {**ADE_SEGMENTS[2], "isthing": True},
                ],
            },
        )

    def test_metadata(self):
        meta = MetadataCatalog.get("ade20k_panoptic_val")
        self.assertEqual(meta.evaluator_type, "ade20k_panoptic_seg")
        self.assertEqual((meta.ignore_label, meta.label_divisor), (255, 1000))
        self.assertEqual(len(meta.thing_classes), 100)
        self.assertEqual(meta.thing_classes[:2], ["bed", "window "])  # detectron2's names
        self.assertEqual(meta.thing_colors[0], [204, 5, 255])
        self.assertEqual(len(meta.stuff_classes), 150)
        self.assertEqual((meta.stuff_classes[0], meta.stuff_classes[149]), ("wall", "flag"))
        self.assertEqual(meta.stuff_colors[0], [120, 120, 120])
        thing_map = meta.thing_dataset_id_to_contiguous_id
        self.assertEqual(sorted(thing_map)[:10], ADE_THING_IDS)
        self.assertEqual(len(thing_map), 100)
        self.assertTrue(all(k == v for k, v in thing_map.items()))
        self.assertEqual(meta.stuff_dataset_id_to_contiguous_id, {i: i for i in range(150)})
        self.assertEqual(meta.panoptic_root, self.path("ade20k_panoptic_val"))
        self.assertEqual(meta.panoptic_json, self.json)
        self.assertEqual(meta.image_root, self.path("images", "validation"))
        self.assertEqual(meta.sem_seg_root, self.path("annotations_detectron2", "validation"))
        self.assertEqual(meta.json_file, self.path("ade20k_instance_val.json"))
        self.assertEqual(
            MetadataCatalog.get("ade20k_panoptic_train").panoptic_root,
            self.path("ade20k_panoptic_train"),
        )

    def test_missing_json(self):
        os.remove(self.json)
        self.assertDatasetError(
            "ade20k_panoptic_val",
            f"panoptic JSON not found: {self.json}",
            "annotations_instance/",
            "prepare_ade20k_panoptic_seg.py",
        )

    def test_missing_root(self):
        self.assertDatasetError(
            "ade20k_panoptic_train", os.path.join(self.base, "ade20k_panoptic_train.json")
        )
        register_all_ade20k_panoptic(os.path.join(self.root, "nowhere"))
        self.assertDatasetError(
            "ade20k_panoptic_val", f"folder not found: {os.path.join(self.root, 'nowhere')}."
        )

    def test_missing_semantic_labels(self):
        shutil.rmtree(self.path("annotations_detectron2"))
        self.assertDatasetError(
            "ade20k_panoptic_val",
            f"folder not found: {self.path('annotations_detectron2')}.",
            "prepare_ade20k_sem_seg.py",
        )
        os.makedirs(self.path("annotations_detectron2", "validation"))
        self.assertDatasetError(
            "ade20k_panoptic_val", f"semantic label {self.label} of image {self.image} not found"
        )

    def test_png_without_json_entry(self):
        extra = write(
            self.path("ade20k_panoptic_val", "ADE_val_2.png"), id2rgb(np.array(ADE_SEGMENT_IDS))
        )
        self.assertDatasetError(
            "ade20k_panoptic_val", f"panoptic PNG {extra} has no annotation in {self.json}"
        )

    def test_json_entry_without_png(self):
        os.remove(self.png)
        self.assertDatasetError(
            "ade20k_panoptic_val", f"panoptic PNG {self.png} of {self.json} not found"
        )

    def test_image_not_in_folder(self):
        os.remove(self.image)
        self.assertDatasetError(
            "ade20k_panoptic_val", f"image {self.image} (image_id '{ADE_ID}' of {self.json})"
        )

    def test_category_outside_metadata(self):
        self.write_json(ADE_SEGMENTS[:2] + [{**ADE_SEGMENTS[2], "category_id": 150}])
        self.assertDatasetError(
            "ade20k_panoptic_val",
            f"segment 300 of {self.png} has category_id 150",
            "ids 0..149, 150 in all",
        )

    def test_annotation_of_unlisted_image(self):
        self.write_json(image_id="ADE_val_9")
        self.assertDatasetError("ade20k_panoptic_val", "image_id 'ADE_val_9'", self.json)

    def test_malformed_json(self):
        self.write_json([{"id": 1, "area": 3}])
        self.assertDatasetError(
            "ade20k_panoptic_val", f"malformed panoptic JSON {self.json}", "'category_id'"
        )
        with open(self.json, "w") as f:
            f.write("{")
        self.assertDatasetError("ade20k_panoptic_val", f"cannot read panoptic JSON {self.json}")


class TestADE20KInstance(CatalogTestCase):
    NAMES = ADE_INSTANCE + USER

    BED = np.array([[1, 1, 0], [0, 0, 0]], bool)
    FLAG = np.array([[0, 0, 0], [0, 1, 1]], bool)

    def setUp(self):
        super().setUp()
        base = os.path.join(self.root, "ADEChallengeData2016")
        self.image_root = os.path.join(base, "images", "validation")
        self.image = write(os.path.join(self.image_root, ADE_ID + ".jpg"), rgb(2, 3))
        self.json = os.path.join(base, "ade20k_instance_val.json")
        self.write_json()
        register_all_ade20k_instance(self.root)

    def write_json(self, bed_category=7, image_id=ADE_ID):
        annotations = [
            {
                "id": 1,
                "image_id": image_id,
                "category_id": bed_category,
                "iscrowd": 0,
                "bbox": [0, 0, 2, 1],
                "area": 2,
                "segmentation": rle(self.BED),
            },
            {
                "id": 2,
                "image_id": image_id,
                "category_id": 149,
                "iscrowd": 0,
                "bbox": [1, 1, 2, 1],
                "area": 2,
                "segmentation": rle(self.FLAG),
            },
        ]
        thing_ids = sorted(ade20k_instance_metadata()["thing_dataset_id_to_contiguous_id"])
        write_json(
            self.json,
            {
                "images": [{"id": ADE_ID, "file_name": ADE_ID + ".jpg", "width": 3, "height": 2}],
                "annotations": annotations,
                "categories": [{"id": i, "name": f"class {i}"} for i in thing_ids],
            },
        )

    def test_records_and_metadata(self):
        (record,) = DatasetCatalog.get("ade20k_instance_val")
        common = {"iscrowd": 0, "bbox_mode": BoxMode.XYWH_ABS}
        self.assertEqual(
            record,
            {
                "file_name": self.image,
                "image_id": ADE_ID,
                "height": 2,
                "width": 3,
                "annotations": [
                    {
                        "category_id": 0,
                        "bbox": [0, 0, 2, 1],
                        "segmentation": rle(self.BED),
                        **common,
                    },
                    {
                        "category_id": 99,
                        "bbox": [1, 1, 2, 1],
                        "segmentation": rle(self.FLAG),
                        **common,
                    },
                ],
            },
        )
        meta = MetadataCatalog.get("ade20k_instance_val")
        self.assertEqual(meta.evaluator_type, "coco")
        self.assertEqual((meta.json_file, meta.image_root), (self.json, self.image_root))
        self.assertEqual(len(meta.thing_classes), 100)
        self.assertEqual((meta.thing_classes[0], meta.thing_classes[99]), ("bed", "flag"))
        thing_map = meta.thing_dataset_id_to_contiguous_id
        self.assertEqual(thing_map, {k: i for i, k in enumerate(sorted(thing_map))})
        self.assertEqual(sorted(thing_map)[:10], ADE_THING_IDS)
        self.assertEqual((thing_map[7], thing_map[8], thing_map[149]), (0, 1, 99))

    def test_same_records_as_detectron2_registration(self):
        # A user's own COCO instance JSON registered with detectron2 gives the same records.
        register_coco_instances("_test_user_instances", {}, self.json, self.image_root)
        self.assertEqual(
            DatasetCatalog.get("_test_user_instances"), DatasetCatalog.get("ade20k_instance_val")
        )

    def test_missing_json(self):
        os.remove(self.json)
        self.assertDatasetError(
            "ade20k_instance_val",
            f"instance JSON not found: {self.json}",
            "prepare_ade20k_instance_seg.py",
        )

    def test_category_outside_metadata(self):
        self.write_json(bed_category=3)  # floor: a stuff class
        self.assertDatasetError(
            "ade20k_instance_val", f"image_id '{ADE_ID}' in {self.json} has category_id 3"
        )

    def test_image_not_in_folder(self):
        os.remove(self.image)
        self.assertDatasetError("ade20k_instance_val", f"image {self.image} (image_id")

    def test_annotation_image_ids_do_not_match(self):
        self.write_json(image_id=1)
        self.assertDatasetError(
            "ade20k_instance_val", f"{self.json} has no annotation for any of its 1 images"
        )

    def test_unreadable_json(self):
        write_json(self.json, {"annotations": []})
        self.assertDatasetError("ade20k_instance_val", f"no images in {self.json}")
        with open(self.json, "w") as f:
            f.write("{")
        self.assertDatasetError("ade20k_instance_val", f"cannot read instance JSON {self.json}")


class TestADE20KPreparedByScripts(CatalogTestCase):
    """The outputs of datasets/prepare_ade20k_{panoptic,instance}_seg.py load as registered."""

    NAMES = ADE_PANOPTIC + ADE_INSTANCE

    def test_prepared_tree_loads(self):
        base = os.path.join(self.root, "ADEChallengeData2016")
        # Raw semantic 1 = wall, 8 = bed, 0 = other; instance R 1 = bed (instance class 1).
        semantic = np.array([[1, 8, 8], [1, 0, 8]], np.uint8)
        instance = np.zeros((2, 3, 3), np.uint8)
        instance[0, 1:] = instance[1, 2] = (1, 1, 0)
        for split, image_id in (("training", "ADE_train_1"), ("validation", ADE_ID)):
            write(os.path.join(base, "images", split, image_id + ".jpg"), rgb(2, 3))
            write(os.path.join(base, "annotations", split, image_id + ".png"), semantic)
            write(
                os.path.join(base, "annotations_detectron2", split, image_id + ".png"), semantic - 1
            )
            write(os.path.join(base, "annotations_instance", split, image_id + ".png"), instance)
        with contextlib.redirect_stdout(io.StringIO()):
            for script in ("panoptic", "instance"):
                load_script(f"datasets/prepare_ade20k_{script}_seg.py").main(["--root", base])
        register_all_ade20k_panoptic(self.root)
        register_all_ade20k_instance(self.root)
        (record,) = DatasetCatalog.get("ade20k_panoptic_val")
        segments = [(s["category_id"], s["isthing"], s["iscrowd"]) for s in record["segments_info"]]
        self.assertEqual(segments, [(0, False, 0), (7, True, 0)])
        with Image.open(record["pan_seg_file_name"]) as png:
            ids = rgb2id(np.asarray(png))
        wall, bed = (s["id"] for s in record["segments_info"])
        np.testing.assert_array_equal(ids, [[wall, bed, bed], [wall, 0, bed]])
        (record,) = DatasetCatalog.get("ade20k_instance_val")
        (annotation,) = record["annotations"]
        self.assertEqual(annotation["category_id"], 0)
        np.testing.assert_array_equal(
            mask_util.decode(annotation["segmentation"]), [[0, 1, 1], [0, 0, 1]]
        )


class TestCocoPanoptic(CatalogTestCase):
    NAMES = COCO_PANOPTIC + USER + ["coco_2017_val_panoptic"]

    def setUp(self):
        super().setUp()
        self.base = os.path.join(self.root, "coco")
        self.image = write(os.path.join(self.base, "val2017", "000000000139.jpg"), rgb(2, 3))
        # person (COCO id 1), rug-merged (200, the last stuff), banner (92, the first stuff).
        self.segments = [
            {"id": 5, "category_id": 1, "area": 2, "bbox": [0, 0, 2, 1], "iscrowd": 1},
            {"id": 7, "category_id": 200, "area": 1, "bbox": [0, 1, 1, 1], "iscrowd": 0},
            {"id": 9, "category_id": 92, "area": 2, "bbox": [1, 1, 2, 1], "iscrowd": 0},
        ]
        self.png = write(
            os.path.join(self.base, "panoptic_val2017", "000000000139.png"),
            id2rgb(np.array([[5, 5, 0], [7, 9, 9]])),
        )
        self.json = write_json(
            os.path.join(self.base, "annotations", "panoptic_val2017.json"),
            {
                "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 3, "height": 2}],
                "annotations": [
                    {
                        "image_id": 139,
                        "file_name": "000000000139.png",
                        "segments_info": self.segments,
                    }
                ],
                "categories": [],
            },
        )
        register_all_coco_panoptic(self.root)

    def prepare(self, *args):
        script = load_script("datasets/prepare_coco_semantic_from_panoptic.py")
        with contextlib.redirect_stdout(io.StringIO()):
            script.main(["--root", self.base, *args])

    def test_semantic_labels_and_record(self):
        self.prepare()
        (record,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
        label = os.path.join(self.base, "panoptic_semseg_val2017", "000000000139.png")
        self.assertEqual(
            record,
            {
                "file_name": self.image,
                "image_id": 139,
                "pan_seg_file_name": self.png,
                "sem_seg_file_name": label,
                "height": 2,
                "width": 3,
                "segments_info": [
                    {**self.segments[0], "category_id": 0, "isthing": True},
                    {**self.segments[1], "category_id": 132, "isthing": False},
                    {**self.segments[2], "category_id": 80, "isthing": False},
                ],
            },
        )
        with Image.open(label) as image:
            self.assertEqual(image.mode, "L")
            np.testing.assert_array_equal(np.asarray(image), [[0, 0, 255], [132, 80, 80]])

    def test_metadata(self):
        meta = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
        self.assertEqual(meta.evaluator_type, "coco_panoptic_seg")
        self.assertEqual((meta.ignore_label, meta.label_divisor), (255, 1000))
        self.assertEqual(len(meta.thing_classes), 80)
        self.assertEqual((meta.thing_classes[0], meta.thing_classes[79]), ("person", "toothbrush"))
        self.assertEqual(len(meta.stuff_classes), 133)
        self.assertEqual(meta.stuff_classes[80], "banner")
        self.assertEqual(meta.thing_colors[0], [220, 20, 60])
        thing_map, stuff_map = (
            meta.thing_dataset_id_to_contiguous_id,
            meta.stuff_dataset_id_to_contiguous_id,
        )
        self.assertEqual((len(thing_map), thing_map[1], thing_map[90]), (80, 0, 79))
        self.assertEqual(
            (len(stuff_map), stuff_map[1], stuff_map[92], stuff_map[200]), (133, 0, 80, 132)
        )
        self.assertEqual(
            meta.json_file, os.path.join(self.base, "annotations", "instances_val2017.json")
        )
        self.assertEqual(meta.sem_seg_root, os.path.join(self.base, "panoptic_semseg_val2017"))
        self.assertEqual(meta.panoptic_root, os.path.join(self.base, "panoptic_val2017"))
        self.assertEqual(meta.image_root, os.path.join(self.base, "val2017"))

    def test_detectron2_builtin_untouched(self):
        self.assertEqual(
            loader_module("coco_2017_val_panoptic"), "detectron2.data.datasets.coco_panoptic"
        )
        self.assertEqual(len(MetadataCatalog.get("coco_2017_val_panoptic").thing_classes), 133)

    def test_same_segments_as_detectron2_registration(self):
        # A user's own COCO panoptic data registered with detectron2 gives the same segments.
        register_coco_panoptic(
            "_test_user_panoptic",
            coco_panoptic_metadata(),
            os.path.join(self.base, "val2017"),
            os.path.join(self.base, "panoptic_val2017"),
            self.json,
        )
        (theirs,) = DatasetCatalog.get("_test_user_panoptic")
        self.prepare()
        (ours,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
        self.assertEqual(ours["segments_info"], theirs["segments_info"])
        self.assertEqual({k: ours[k] for k in theirs}, theirs)

    def test_missing_semantic_labels(self):
        self.assertDatasetError(
            "coco_2017_val_panoptic_with_sem_seg",
            f"folder not found: {os.path.join(self.base, 'panoptic_semseg_val2017')}.",
            "prepare_coco_semantic_from_panoptic.py",
        )

    def test_missing_panoptic_json(self):
        self.prepare()
        json_file = os.path.join(self.base, "annotations", "panoptic_train2017.json")
        self.assertDatasetError(
            "coco_2017_train_panoptic_with_sem_seg",
            f"panoptic JSON not found: {json_file}",
            "panoptic_annotations_trainval2017.zip",
        )

    def test_script_keeps_outputs_and_fails_on_bad_input(self):
        self.prepare()
        label = os.path.join(self.base, "panoptic_semseg_val2017", "000000000139.png")
        write(label, np.zeros((2, 3), np.uint8))
        self.prepare()  # kept
        np.testing.assert_array_equal(np.asarray(Image.open(label)), 0)
        self.segments[2]["category_id"] = 91  # no COCO category has id 91
        write_json(
            self.json,
            {
                **read_json(self.json),
                "annotations": [
                    {
                        "image_id": 139,
                        "file_name": "000000000139.png",
                        "segments_info": self.segments,
                    }
                ],
            },
        )
        with self.assertRaises(SystemExit) as ctx:
            self.prepare("--overwrite")
        self.assertIn(f"{self.png}: segment 9 has category_id 91", str(ctx.exception))
        with self.assertRaises(SystemExit) as ctx:
            load_script("datasets/prepare_coco_semantic_from_panoptic.py").main(
                ["--root", os.path.join(self.root, "empty")]
            )
        self.assertIn(os.path.join(self.root, "empty"), str(ctx.exception))


class CityscapesTestCase(CatalogTestCase):
    def make_city(self, root, split, city_id, instance_ids=INSTANCE_IDS):
        """Image, instanceIds and labelTrainIds of one Cityscapes frame; returns the image path."""
        city = city_id.split("_")[0]
        gt = os.path.join(root, "cityscapes", "gtFine", split, city, city_id)
        write(gt + "_gtFine_instanceIds.png", np.asarray(instance_ids, np.uint16))
        write(gt + "_gtFine_labelTrainIds.png", np.zeros(np.shape(instance_ids), np.uint8))
        image = os.path.join(root, "cityscapes", "leftImg8bit", split, city, city_id)
        return write(image + "_leftImg8bit.png", rgb(*np.shape(instance_ids)))


class TestCityscapesPanoptic(CityscapesTestCase):
    NAMES = CITYSCAPES_PANOPTIC

    def setUp(self):
        super().setUp()
        # A "." in the root: detectron2's loader cuts the labelTrainIds path at the first ".".
        self.root = os.path.join(self.root, "my.data")
        self.image = self.make_city(self.root, "val", CITY_ID)
        self.make_city(self.root, "train", "aachen_000000_000019")
        self.gt = os.path.join(self.root, "cityscapes", "gtFine")
        register_all_cityscapes_panoptic(self.root)

    def prepare(self, root=None):
        script = load_script("datasets/prepare_cityscapes_panoptic.py")
        with contextlib.redirect_stdout(io.StringIO()) as out:
            script.main(["--root", root or os.path.join(self.root, "cityscapes")])
        return out.getvalue()

    def test_prepared_record(self):
        self.prepare()
        self.assertIn("val: kept existing", self.prepare())
        self.assertEqual(
            sorted(os.listdir(self.gt)),
            [
                "cityscapes_panoptic_train",
                "cityscapes_panoptic_train.json",
                "cityscapes_panoptic_val",
                "cityscapes_panoptic_val.json",
                "train",
                "val",
            ],
        )
        (record,) = DatasetCatalog.get("cityscapes_fine_panoptic_val")
        png = os.path.join(self.gt, "cityscapes_panoptic_val", CITY_ID + "_gtFine_panoptic.png")
        stuff, thing = {"isthing": False, "iscrowd": 0}, {"isthing": True, "iscrowd": 0}
        self.assertEqual(
            record,
            {
                "file_name": self.image,
                "image_id": CITY_ID,
                "pan_seg_file_name": png,
                "sem_seg_file_name": os.path.join(
                    self.gt, "val", "frankfurt", CITY_ID + "_gtFine_labelTrainIds.png"
                ),
                "height": 3,
                "width": 4,
                "segments_info": [
                    {"id": 7, "category_id": 0, "area": 3, "bbox": [0, 0, 2, 3], **stuff},
                    {
                        "id": 26,
                        "category_id": 13,
                        "area": 2,
                        "bbox": [0, 1, 2, 1],
                        "isthing": True,
                        "iscrowd": 1,
                    },
                    {"id": 24000, "category_id": 11, "area": 2, "bbox": [2, 0, 2, 1], **thing},
                    {"id": 24001, "category_id": 11, "area": 1, "bbox": [2, 1, 1, 1], **thing},
                    {"id": 33000, "category_id": 18, "area": 2, "bbox": [2, 2, 2, 1], **thing},
                ],
            },
        )
        with Image.open(png) as image:
            ids = rgb2id(np.asarray(image))
        expected = np.where(np.isin(INSTANCE_IDS, [0, 29000]), 0, INSTANCE_IDS)
        np.testing.assert_array_equal(ids, expected)

    def test_metadata_replaces_detectron2(self):
        self.assertEqual(
            loader_module("cityscapes_fine_panoptic_val"), "semask_d2.data.datasets.panoptic_json"
        )
        meta = MetadataCatalog.get("cityscapes_fine_panoptic_val")
        self.assertEqual(meta.evaluator_type, "cityscapes_panoptic_seg")
        self.assertEqual((meta.ignore_label, meta.label_divisor), (255, 1000))
        self.assertEqual(meta.thing_classes, meta.stuff_classes)
        self.assertEqual(len(meta.stuff_classes), 19)
        self.assertEqual((meta.stuff_classes[0], meta.stuff_classes[18]), ("road", "bicycle"))
        self.assertEqual(meta.stuff_colors[11], [220, 20, 60])
        self.assertEqual(
            meta.thing_dataset_id_to_contiguous_id,
            {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18},
        )
        self.assertEqual(
            meta.stuff_dataset_id_to_contiguous_id,
            {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10},
        )
        self.assertEqual(meta.gt_dir, os.path.join(self.gt, "val"))
        self.assertEqual(meta.panoptic_root, os.path.join(self.gt, "cityscapes_panoptic_val"))
        self.assertEqual(meta.panoptic_json, os.path.join(self.gt, "cityscapes_panoptic_val.json"))
        self.assertEqual(
            meta.image_root, os.path.join(self.root, "cityscapes", "leftImg8bit", "val")
        )

    def test_missing_json(self):
        self.assertDatasetError(
            "cityscapes_fine_panoptic_val",
            f"panoptic JSON not found: {os.path.join(self.gt, 'cityscapes_panoptic_val.json')}",
            "prepare_cityscapes_panoptic.py",
        )

    def test_missing_label_train_ids(self):
        self.prepare()
        label = os.path.join(self.gt, "val", "frankfurt", CITY_ID + "_gtFine_labelTrainIds.png")
        os.remove(label)
        self.assertDatasetError(
            "cityscapes_fine_panoptic_val",
            f"semantic label {label} of image {self.image} not found",
            "prepare_cityscapes_sem_seg.py",
        )

    def test_image_not_in_folder(self):
        self.prepare()
        os.remove(self.image)
        self.assertDatasetError(
            "cityscapes_fine_panoptic_val", f"image {self.image} (image_id '{CITY_ID}'"
        )

    def test_script_without_instance_ids(self):
        with self.assertRaises(SystemExit) as ctx:
            self.prepare(os.path.join(self.root, "elsewhere"))
        self.assertIn(os.path.join(self.root, "elsewhere", "gtFine"), str(ctx.exception))


class TestCityscapesInstance(CityscapesTestCase):
    NAMES = CITYSCAPES_INSTANCE

    def setUp(self):
        super().setUp()
        self.image = self.make_city(self.root, "val", CITY_ID)
        self.gt = os.path.join(self.root, "cityscapes", "gtFine", "val")
        register_all_cityscapes_instance(self.root)

    def test_record_without_polygons(self):
        self.assertFalse(
            any(name.endswith(".json") for name in os.listdir(os.path.join(self.gt, "frankfurt")))
        )
        (record,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
        annotations = record.pop("annotations")
        self.assertEqual(
            record,
            {
                "file_name": self.image,
                "image_id": CITY_ID + "_leftImg8bit.png",
                "height": 3,
                "width": 4,
            },
        )
        # In value order: car group (crowd), persons 24000 and 24001, bicycle; the caravan
        # (ignoreInEval), road (stuff) and unlabeled are left out.
        expected = [
            (26, 2, 1, [0, 1, 2, 2]),
            (24000, 0, 0, [2, 0, 4, 1]),
            (24001, 0, 0, [2, 1, 3, 2]),
            (33000, 7, 0, [2, 2, 4, 3]),
        ]
        self.assertEqual(len(annotations), len(expected))
        for annotation, (value, category_id, iscrowd, bbox) in zip(annotations, expected):
            segmentation = annotation.pop("segmentation")
            self.assertEqual(
                annotation,
                {
                    "category_id": category_id,
                    "iscrowd": iscrowd,
                    "bbox": bbox,
                    "bbox_mode": BoxMode.XYXY_ABS,
                },
            )
            self.assertIsInstance(segmentation["counts"], str)
            np.testing.assert_array_equal(
                mask_util.decode(segmentation), np.asarray(INSTANCE_IDS) == value
            )

    def test_metadata_replaces_detectron2(self):
        for name in CITYSCAPES_INSTANCE:
            self.assertEqual(loader_module(name), "semask_d2.data.datasets.cityscapes_instance")
        meta = MetadataCatalog.get("cityscapes_fine_instance_seg_val")
        self.assertEqual(meta.evaluator_type, "cityscapes_instance")
        self.assertEqual(
            meta.thing_classes,
            ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"],
        )
        self.assertEqual(meta.thing_colors[0], [220, 20, 60])
        self.assertEqual(len(meta.stuff_classes), 19)
        self.assertEqual(meta.gt_dir, self.gt)
        self.assertEqual(
            meta.image_dir, os.path.join(self.root, "cityscapes", "leftImg8bit", "val")
        )
        self.assertNotIn("thing_dataset_id_to_contiguous_id", meta.as_dict())

    def test_parallel_reading(self):
        self.make_city(self.root, "val", "lindau_000001_000019", np.full((2, 2), 24005))
        with mock.patch("os.cpu_count", return_value=4):  # 2 processes
            records = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
        self.assertEqual([len(r["annotations"]) for r in records], [4, 1])
        self.assertEqual(records[1]["annotations"][0]["bbox"], [0.0, 0.0, 2.0, 2.0])

    def test_missing_instance_ids(self):
        instance = os.path.join(self.gt, "frankfurt", CITY_ID + "_gtFine_instanceIds.png")
        os.remove(instance)
        self.assertDatasetError(
            "cityscapes_fine_instance_seg_val",
            f"image {self.image} has no instance label {instance}",
        )

    def test_value_that_is_no_label(self):
        bad = np.array(INSTANCE_IDS)
        bad[0, 0] = 40
        self.make_city(self.root, "val", CITY_ID, bad)
        instance = os.path.join(self.gt, "frankfurt", CITY_ID + "_gtFine_instanceIds.png")
        self.assertDatasetError(
            "cityscapes_fine_instance_seg_val", f"instance label {instance} has value 40"
        )

    def test_missing_split(self):
        self.assertDatasetError(
            "cityscapes_fine_instance_seg_train",
            f"folder not found: {os.path.join(self.root, 'cityscapes', 'leftImg8bit', 'train')}.",
        )

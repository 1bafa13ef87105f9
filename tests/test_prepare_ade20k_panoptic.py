"""
datasets/prepare_ade20k_{panoptic,instance}_seg.py on a hand-made ADEChallengeData2016 tree:
outputs compared with hand-built JSON and id maps, bad inputs, keeping and overwriting outputs.
"""

import json
import os
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from panopticapi.utils import rgb2id
from semask_d2.data.datasets.class_tables import load_class_table

from script_loader import load_script

VAL1, VAL2, TRAIN1 = "ADE_val_00000001", "ADE_val_00000002", "ADE_train_00000001"

# ADE_val_00000001 (6 x 8). Raw labels: 1 wall, 4 floor, 8 bed (thing), 9 windowpane (thing),
# 0 other.
VAL1_SEMANTIC = [
    [1, 1, 1, 1, 1, 1, 9, 9],
    [1, 1, 1, 1, 1, 1, 9, 9],
    [1, 1, 8, 8, 8, 1, 1, 1],
    [4, 4, 8, 8, 8, 4, 4, 0],
    [4, 4, 4, 4, 4, 4, 4, 0],
    [4, 4, 4, 4, 4, 4, 4, 0],
]
# G = instance index: 1 a bed over bed, wall (2, 5) and floor pixels; 2 the right half of the
# windowpane (its left half has no instance); 3 a bed over "other" pixels.
VAL1_INDEX = [
    [0, 0, 0, 0, 0, 0, 0, 2],
    [0, 0, 0, 0, 0, 0, 0, 2],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 3],
    [0, 0, 0, 0, 0, 0, 0, 3],
]
# R = instance class: 1 bed, 2 windowpane. R without G (at (0, 6)) is not an instance.
VAL1_CLASS = [
    [0, 0, 0, 0, 0, 0, 2, 2],
    [0, 0, 0, 0, 0, 0, 0, 2],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 1],
    [0, 0, 0, 0, 0, 0, 0, 1],
]
# Segment ids: 1 wall, 2 floor (stuff, in class order), then 3, 4, 5 = instances G 1, 2, 3.
# The windowpane pixels outside its instance and the "other" pixels are void (0).
VAL1_IDS = [
    [1, 1, 1, 1, 1, 1, 0, 4],
    [1, 1, 1, 1, 1, 1, 0, 4],
    [1, 1, 3, 3, 3, 3, 1, 1],
    [2, 2, 3, 3, 3, 3, 2, 0],
    [2, 2, 3, 3, 3, 3, 2, 5],
    [2, 2, 2, 2, 2, 2, 2, 5],
]
# Areas and boxes as pasted: wall keeps 17 pixels (16 visible), floor 18 (13 visible).
VAL1_SEGMENTS = [
    {"id": 1, "category_id": 0, "area": 17, "bbox": [0, 0, 8, 3], "iscrowd": 0},
    {"id": 2, "category_id": 3, "area": 18, "bbox": [0, 3, 7, 3], "iscrowd": 0},
    {"id": 3, "category_id": 7, "area": 12, "bbox": [2, 2, 4, 3], "iscrowd": 0},
    {"id": 4, "category_id": 8, "area": 2, "bbox": [7, 0, 1, 2], "iscrowd": 0},
    {"id": 5, "category_id": 7, "area": 2, "bbox": [7, 4, 1, 2], "iscrowd": 0},
]

# ADE_val_00000002 (3 x 4): tree (raw 5) completely covered by a cabinet (instance class 3),
# sky (raw 3), other.
VAL2_SEMANTIC = [[5, 5, 3, 3], [5, 5, 3, 3], [0, 0, 3, 3]]
VAL2_INDEX = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
VAL2_CLASS = [[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 0, 0]]
VAL2_IDS = [[3, 3, 1, 1], [3, 3, 1, 1], [0, 0, 1, 1]]
# The tree segment stays listed although no pixel of the PNG has its id.
VAL2_SEGMENTS = [
    {"id": 1, "category_id": 2, "area": 6, "bbox": [2, 0, 2, 3], "iscrowd": 0},
    {"id": 2, "category_id": 4, "area": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0},
    {"id": 3, "category_id": 10, "area": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0},
]

# ADE_train_00000001 (2 x 3): sky and other, no instance at all.
TRAIN1_SEMANTIC = [[3, 3, 0], [3, 3, 3]]
TRAIN1_IDS = [[1, 1, 0], [1, 1, 1]]
TRAIN1_SEGMENTS = [{"id": 1, "category_id": 2, "area": 5, "bbox": [0, 0, 3, 2], "iscrowd": 0}]

EXPECTED_PANOPTIC = {
    "val": {
        "images": [
            {"id": VAL1, "file_name": VAL1 + ".jpg", "width": 8, "height": 6},
            {"id": VAL2, "file_name": VAL2 + ".jpg", "width": 4, "height": 3},
        ],
        "annotations": [
            {"image_id": VAL1, "file_name": VAL1 + ".png", "segments_info": VAL1_SEGMENTS},
            {"image_id": VAL2, "file_name": VAL2 + ".png", "segments_info": VAL2_SEGMENTS},
        ],
    },
    "train": {
        "images": [{"id": TRAIN1, "file_name": TRAIN1 + ".jpg", "width": 3, "height": 2}],
        "annotations": [
            {"image_id": TRAIN1, "file_name": TRAIN1 + ".png", "segments_info": TRAIN1_SEGMENTS}
        ],
    },
}
EXPECTED_IDS = {"val": {VAL1: VAL1_IDS, VAL2: VAL2_IDS}, "train": {TRAIN1: TRAIN1_IDS}}


def coco_instance(annotation_id, image_id, category_id, bbox, area):
    """An expected instance annotation, without its RLE."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": 0,
        "bbox": bbox,
        "area": area,
    }


# Instance JSON without the RLEs, which are decoded and compared with INSTANCE_MASKS.
EXPECTED_INSTANCE = {
    "val": {
        "images": EXPECTED_PANOPTIC["val"]["images"],
        "annotations": [
            coco_instance(1, VAL1, 7, [2, 2, 4, 3], 12),
            coco_instance(2, VAL1, 8, [7, 0, 1, 2], 2),
            coco_instance(3, VAL1, 7, [7, 4, 1, 2], 2),
            coco_instance(4, VAL2, 10, [0, 0, 2, 2], 4),
        ],
    },
    # Listed although it has no instance.
    "train": {"images": EXPECTED_PANOPTIC["train"]["images"], "annotations": []},
}
INSTANCE_MASKS = [
    (np.array(VAL1_INDEX) == 1),
    (np.array(VAL1_INDEX) == 2),
    (np.array(VAL1_INDEX) == 3),
    (np.array(VAL2_INDEX) == 1),
]


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def instance_png(classes, indices):
    """(H, W, 3) uint8: R = instance class, G = instance index, B = 0."""
    classes = np.asarray(classes, dtype=np.uint8)
    return np.stack([classes, np.asarray(indices, np.uint8), np.zeros_like(classes)], axis=-1)


def read_json(path):
    with open(path) as f:
        return json.load(f)


class PrepareTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = os.path.join(tmp.name, "ADEChallengeData2016")
        self.panoptic = load_script("datasets/prepare_ade20k_panoptic_seg.py")
        self.instance = load_script("datasets/prepare_ade20k_instance_seg.py")
        self.add_image("validation", VAL1, VAL1_SEMANTIC, VAL1_CLASS, VAL1_INDEX)
        self.add_image("validation", VAL2, VAL2_SEMANTIC, VAL2_CLASS, VAL2_INDEX)
        no_instance = np.zeros((2, 3), np.uint8)
        self.add_image("training", TRAIN1, TRAIN1_SEMANTIC, no_instance, no_instance)

    def add_image(self, split, image_id, semantic, classes, indices):
        height, width = np.shape(semantic)
        image = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
        write_png(self.path("annotations", split, image_id), semantic)
        write_png(
            self.path("annotations_instance", split, image_id), instance_png(classes, indices)
        )
        os.makedirs(os.path.join(self.root, "images", split), exist_ok=True)
        Image.fromarray(image).save(os.path.join(self.root, "images", split, image_id + ".jpg"))

    def path(self, folder, split, image_id):
        return os.path.join(self.root, folder, split, image_id + ".png")

    def run_script(self, script, *args):
        script.main(["--root", self.root, *args])

    def panoptic_ids(self, name, image_id):
        png = os.path.join(self.root, f"ade20k_panoptic_{name}", image_id + ".png")
        with Image.open(png) as image:
            self.assertEqual(image.mode, "RGB")
            return rgb2id(np.asarray(image))

    def assertFails(self, script, *expected):
        """main() stops with status 1: a one-line message containing every `expected`."""
        with self.assertRaises(SystemExit) as ctx:
            self.run_script(script)
        message = ctx.exception.code
        # A str code makes the interpreter print it to stderr and exit with status 1.
        self.assertIsInstance(message, str)
        self.assertNotIn("\n", message)
        self.assertIn("Fix:", message)
        for text in expected:
            self.assertIn(text, message)


class TestPanoptic(PrepareTestCase):
    def test_outputs_match_hand_built(self):
        self.run_script(self.panoptic)
        for name in ("val", "train"):
            data = read_json(os.path.join(self.root, f"ade20k_panoptic_{name}.json"))
            categories = data.pop("categories")
            self.assertEqual(data, EXPECTED_PANOPTIC[name])
            self.assertEqual(len(categories), 150)
            self.assertEqual(
                categories[7], {"id": 7, "name": "bed", "isthing": 1, "color": [204, 5, 255]}
            )
            self.assertEqual(
                categories[2], {"id": 2, "name": "sky", "isthing": 0, "color": [6, 230, 230]}
            )
            self.assertEqual([c["id"] for c in categories], list(range(150)))
            self.assertEqual(sum(c["isthing"] for c in categories), 100)
            for image_id, ids in EXPECTED_IDS[name].items():
                np.testing.assert_array_equal(self.panoptic_ids(name, image_id), ids)

    def test_segment_rules(self):
        # Direct call: a thing class with no instance is void; a stuff segment that an instance
        # covers keeps its full area and box.
        is_thing = np.zeros(150, bool)
        is_thing[7] = True
        semantic = np.array([[0, 7, 255]], np.uint8)
        instance = (7, np.array([[True, False, False]]))
        ids, segments = self.panoptic.panoptic_segments(semantic, [instance], is_thing)
        np.testing.assert_array_equal(ids, [[2, 0, 0]])
        self.assertEqual(
            segments,
            [
                {"id": 1, "category_id": 0, "area": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0},
                {"id": 2, "category_id": 7, "area": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0},
            ],
        )

    def test_ids_above_255(self):
        # 50 stuff segments (one pixel per stuff class) and 255 beds (G 1..255): 305 segments.
        table = load_class_table("ade20k_150_classes.json")
        stuff = [r["train_id"] for r in table if not r["isthing"]]
        write_png(
            self.path("annotations", "training", TRAIN1), [[i + 1 for i in stuff] + [8] * 255]
        )
        indices = [[0] * 50 + list(range(1, 256))]
        classes = [[0] * 50 + [1] * 255]
        write_png(
            self.path("annotations_instance", "training", TRAIN1), instance_png(classes, indices)
        )
        Image.new("RGB", (305, 1)).save(
            os.path.join(self.root, "images", "training", TRAIN1 + ".jpg")
        )
        self.run_script(self.panoptic)
        png = os.path.join(self.root, "ade20k_panoptic_train", TRAIN1 + ".png")
        with Image.open(png) as image:
            pixels = np.asarray(image)
        # panopticapi's encoding: id = R + 256 G + 256^2 B.
        self.assertEqual(pixels[0, 304].tolist(), [305 - 256, 1, 0])
        np.testing.assert_array_equal(rgb2id(pixels), [list(range(1, 306))])
        data = read_json(os.path.join(self.root, "ade20k_panoptic_train.json"))
        segments = data["annotations"][0]["segments_info"]
        self.assertEqual(len(segments), 305)
        self.assertEqual(
            segments[-1],
            {"id": 305, "category_id": 7, "area": 1, "bbox": [304, 0, 1, 1], "iscrowd": 0},
        )

    def test_keeps_existing_outputs_unless_overwrite(self):
        self.run_script(self.panoptic)
        json_path = os.path.join(self.root, "ade20k_panoptic_val.json")
        png_path = os.path.join(self.root, "ade20k_panoptic_val", VAL1 + ".png")
        Image.new("RGB", (8, 6)).save(png_path)  # all void
        with open(json_path, "w") as f:
            f.write("{}")
        self.run_script(self.panoptic)
        self.assertEqual(read_json(json_path), {})
        self.assertEqual(self.panoptic_ids("val", VAL1).max(), 0)
        # Without the JSON the split is redone, but the existing PNG is kept.
        os.remove(json_path)
        self.run_script(self.panoptic)
        self.assertEqual(read_json(json_path)["annotations"][0]["segments_info"], VAL1_SEGMENTS)
        self.assertEqual(self.panoptic_ids("val", VAL1).max(), 0)
        self.run_script(self.panoptic, "--overwrite")
        np.testing.assert_array_equal(self.panoptic_ids("val", VAL1), VAL1_IDS)
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.root, "ade20k_panoptic_val"))),
            [VAL1 + ".png", VAL2 + ".png"],
        )


class TestInstance(PrepareTestCase):
    def test_outputs_match_hand_built(self):
        self.run_script(self.instance)
        for name in ("val", "train"):
            data = read_json(os.path.join(self.root, f"ade20k_instance_{name}.json"))
            categories = data.pop("categories")
            rles = [annotation.pop("segmentation") for annotation in data["annotations"]]
            self.assertEqual(data, EXPECTED_INSTANCE[name])
            self.assertEqual(len(categories), 100)
            self.assertEqual(
                categories[:3],
                [
                    {"id": 7, "name": "bed"},
                    {"id": 8, "name": "window "},
                    {"id": 10, "name": "cabinet"},
                ],
            )
            self.assertEqual(categories[-1], {"id": 149, "name": "flag"})
            if name == "val":
                for rle, expected in zip(rles, INSTANCE_MASKS):
                    self.assertIsInstance(rle["counts"], str)
                    self.assertEqual(rle["size"], list(expected.shape))
                    np.testing.assert_array_equal(mask_util.decode(rle), expected)

    def test_thing_classes_match_the_class_table(self):
        # The instance classes map onto exactly the 100 `isthing` classes of ADE20K-150.
        lookup = self.panoptic.instance_class_lookup(
            load_class_table("ade20k_instance_catid_mapping.json")
        )
        self.assertEqual(sorted(lookup), list(range(1, 101)))
        things = [
            r["train_id"] for r in load_class_table("ade20k_150_classes.json") if r["isthing"]
        ]
        self.assertEqual(sorted(set(lookup.values())), things)
        self.assertEqual((lookup[1], lookup[2], lookup[100]), (7, 8, 149))

    def test_keeps_existing_json_unless_overwrite(self):
        self.run_script(self.instance)
        json_path = os.path.join(self.root, "ade20k_instance_val.json")
        with open(json_path, "w") as f:
            f.write("{}")
        self.run_script(self.instance)
        self.assertEqual(read_json(json_path), {})
        self.run_script(self.instance, "--overwrite")
        self.assertEqual(len(read_json(json_path)["annotations"]), 4)


class TestBadInput(PrepareTestCase):
    SCRIPTS = ("panoptic", "instance")

    def test_missing_instance_folder(self):
        os.rename(
            os.path.join(self.root, "annotations_instance"), os.path.join(self.root, "elsewhere")
        )
        folder = os.path.join(self.root, "annotations_instance", "training")
        for script in self.SCRIPTS:
            self.assertFails(getattr(self, script), folder, "annotations_instance.tar")
        self.assertFalse(os.path.exists(os.path.join(self.root, "ade20k_panoptic_train.json")))

    def test_missing_annotation(self):
        semantic = self.path("annotations", "validation", VAL2)
        os.rename(semantic, semantic + ".moved")
        self.assertFails(self.panoptic, semantic, VAL2 + ".jpg", "ADEChallengeData2016.zip")
        os.rename(semantic + ".moved", semantic)
        instance = self.path("annotations_instance", "validation", VAL2)
        os.remove(instance)
        for script in self.SCRIPTS:
            self.assertFails(getattr(self, script), instance, "annotations_instance.tar")

    def test_instance_class_outside_1_to_100(self):
        instance = self.path("annotations_instance", "validation", VAL1)
        for value in (101, 0):
            classes = np.array(VAL1_CLASS)
            classes[classes == 2] = value
            write_png(instance, instance_png(classes, VAL1_INDEX))
            for script in self.SCRIPTS:
                self.assertFails(getattr(self, script), instance, f"R={value}", "1..100")

    def test_instance_with_two_classes(self):
        instance = self.path("annotations_instance", "validation", VAL1)
        classes = np.array(VAL1_CLASS)
        classes[4, 2] = 2  # inside instance G = 1 (bed)
        write_png(instance, instance_png(classes, VAL1_INDEX))
        for script in self.SCRIPTS:
            self.assertFails(getattr(self, script), instance, "G=1", "R=[1, 2]")

    def test_size_mismatch(self):
        semantic = self.path("annotations", "validation", VAL2)
        write_png(semantic, np.zeros((3, 5)))
        self.assertFails(self.panoptic, semantic, "5x3", "4x3")


if __name__ == "__main__":
    unittest.main()

"""
Evaluation of panoptic and instance outputs through build_evaluator: PQ, COCO mask AP and
Cityscapes AP on hand-computed cases, the evaluators chosen per dataset type and flags, and the
one-line errors for missing metadata.
"""

import contextlib
import io
import json
import os
import tempfile
import unittest

import numpy as np
import pycocotools.mask as mask_util
import torch
from panopticapi.utils import id2rgb
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
)
from detectron2.structures import Boxes, Instances

from semask_d2 import add_semask_config
from semask_d2.data import DatasetError
from semask_d2.data.datasets import unregister
from semask_d2.evaluation import InstanceSegEvaluator, SeMaskSemSegEvaluator, build_evaluator

H = W = 10
# Dataset category ids 3, 7 (things) and 12 (stuff) <-> contiguous ids 0, 1, 2.
CATEGORIES = [
    {"id": 3, "name": "cat", "isthing": 1},
    {"id": 7, "name": "dog", "isthing": 1},
    {"id": 12, "name": "sky", "isthing": 0},
]
PANOPTIC_METADATA = {
    "thing_classes": ["cat", "dog"],
    "stuff_classes": ["cat", "dog", "sky"],
    "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1},
    "stuff_dataset_id_to_contiguous_id": {12: 2},
}


def box(rows, cols):
    """Boolean (H, W) mask of rows x cols (ranges)."""
    mask = np.zeros((H, W), dtype=bool)
    mask[rows.start : rows.stop, cols.start : cols.stop] = True
    return mask


# Ground truth of the 10x10 image; the 22 pixels outside the segments are VOID (id 0).
GT_SEGMENTS = [  # (segment id, dataset category id, iscrowd, mask)
    (11, 3, 0, box(range(0, 4), range(0, 5))),  # cat, 20 px
    (12, 7, 0, box(range(0, 2), range(6, 10))),  # dog, 8 px
    (13, 12, 0, box(range(6, 10), range(0, 10))),  # sky, 40 px
    (14, 3, 1, box(range(4, 6), range(5, 10))),  # crowd of cats, 10 px
]
# Model output (ids from 1, contiguous category ids).
PRED_SEGMENTS = [  # (segment id, contiguous category id, isthing, mask)
    # Cat: 16 px on the GT cat and 4 px (row 4, cols 0-3) on VOID.
    (1, 0, True, box(range(0, 5), range(0, 4))),
    # Dog: 10 px in the sky, nowhere near the GT dog.
    (2, 1, True, box(range(6, 8), range(0, 5))),
    # Sky: the rest of the GT sky, 30 px.
    (3, 2, False, box(range(8, 10), range(0, 10)) | box(range(6, 8), range(5, 10))),
    # Cat: exactly on the crowd of cats.
    (4, 0, True, box(range(4, 6), range(5, 10))),
]
# PQ by hand (panopticapi): IoU = |G∩P| / (|P| + |G| - |G∩P| - |P∩VOID|), match if IoU > 0.5.
# cat: TP with IoU 16 / (20 + 20 - 16 - 4) = 0.8 (0.667 if VOID pixels counted). The crowd
#      prediction is no FP: all its pixels lie on a crowd region of its class (else FP 1 and
#      PQ_cat = 0.8 / 1.5). PQ = SQ = 0.8, RQ = 1.
# dog: the prediction is a FP, the GT a miss (FN): PQ = SQ = RQ = 0 (0 / (0 + 0.5 + 0.5)).
# sky: TP with IoU 30 / (30 + 40 - 30 - 0) = 0.75: PQ = SQ = 0.75, RQ = 1.
EXPECTED_PQ = {
    "PQ": 100 * (0.8 + 0 + 0.75) / 3,
    "SQ": 100 * (0.8 + 0 + 0.75) / 3,
    "RQ": 100 * 2 / 3,
    "PQ_th": 100 * 0.4,
    "SQ_th": 100 * 0.4,
    "RQ_th": 100 * 0.5,
    "PQ_st": 100 * 0.75,
    "SQ_st": 100 * 0.75,
    "RQ_st": 100.0,
}


def eval_cfg(panoptic=False, instance=False, semantic=False, official_cityscapes=False):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = panoptic
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = instance
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = semantic
    cfg.TEST.OFFICIAL_CITYSCAPES_EVAL = official_cityscapes
    return cfg


def rle(mask):
    """COCO RLE of a boolean mask, JSON-ready."""
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def write_instances_json(path, categories, annotations, image_id=1, height=H, width=W):
    """COCO instances JSON of one image; annotations: (category id, iscrowd, mask)."""
    data = {
        "images": [{"id": image_id, "file_name": "a.jpg", "height": height, "width": width}],
        "categories": [{"id": c["id"], "name": c["name"]} for c in categories],
        "annotations": [
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": category_id,
                "iscrowd": iscrowd,
                "segmentation": rle(mask),
                "area": int(mask.sum()),
                "bbox": mask_util.toBbox(
                    mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                ).tolist(),
            }
            for i, (category_id, iscrowd, mask) in enumerate(annotations)
        ],
    }
    with open(path, "w") as f:
        json.dump(data, f)


def write_panoptic_dataset(root):
    """
    The image of GT_SEGMENTS in COCO panoptic format (PNG + JSON) and as COCO instances.

    Returns:
        dict: image_root, panoptic_root, panoptic_json, instances_json.
    """
    paths = {
        "image_root": os.path.join(root, "images"),
        "panoptic_root": os.path.join(root, "panoptic"),
        "panoptic_json": os.path.join(root, "panoptic.json"),
        "instances_json": os.path.join(root, "instances.json"),
    }
    os.makedirs(paths["image_root"])
    os.makedirs(paths["panoptic_root"])
    Image.new("RGB", (W, H)).save(os.path.join(paths["image_root"], "a.jpg"))
    ids = np.zeros((H, W), dtype=np.int64)
    for segment_id, _, _, mask in GT_SEGMENTS:
        ids[mask] = segment_id
    Image.fromarray(id2rgb(ids)).save(os.path.join(paths["panoptic_root"], "a.png"))
    segments_info = [
        {"id": s, "category_id": c, "iscrowd": crowd, "area": int(m.sum())}
        for s, c, crowd, m in GT_SEGMENTS
    ]
    panoptic = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments_info}],
        "categories": CATEGORIES,
    }
    with open(paths["panoptic_json"], "w") as f:
        json.dump(panoptic, f)
    things = [c for c in CATEGORIES if c["isthing"]]
    write_instances_json(
        paths["instances_json"],
        things,
        [(c, crowd, m) for _, c, crowd, m in GT_SEGMENTS if c in (3, 7)],
    )
    return paths


def panoptic_output():
    panoptic_seg = torch.zeros((H, W), dtype=torch.int32)
    for segment_id, _, _, mask in PRED_SEGMENTS:
        panoptic_seg[torch.from_numpy(mask)] = segment_id
    segments_info = [
        {"id": s, "isthing": isthing, "category_id": c} for s, c, isthing, _ in PRED_SEGMENTS
    ]
    return panoptic_seg, segments_info


def instances_output(masks, classes, scores, height=H, width=W):
    """Instances as the model returns them: float masks, zero boxes, contiguous classes."""
    result = Instances((height, width))
    result.pred_masks = torch.from_numpy(np.stack(masks)).float()
    result.pred_boxes = Boxes(torch.zeros(len(masks), 4))
    result.scores = torch.tensor(scores)
    result.pred_classes = torch.tensor(classes)
    return result


def evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def kinds(evaluator):
    """The classes of the evaluators built, in order."""
    if isinstance(evaluator, DatasetEvaluators):
        return [type(e) for e in evaluator._evaluators]
    return [type(evaluator)]


class DatasetsTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.root = tmp.name

    def name(self, suffix):
        """A new dataset name, unregistered after the test."""
        self.count = getattr(self, "count", 0) + 1
        name = f"_test_panoptic_eval_{self._testMethodName}_{suffix}_{self.count}"
        self.addCleanup(unregister, name)
        return name


class TestPanopticQuality(DatasetsTestCase):
    def register(self, instances_json=None):
        """The image of GT_SEGMENTS, registered as a user would: register_coco_panoptic."""
        paths = write_panoptic_dataset(self.root)
        name = self.name("coco_panoptic")
        register_coco_panoptic(
            name,
            PANOPTIC_METADATA,
            paths["image_root"],
            paths["panoptic_root"],
            paths["panoptic_json"],
            paths["instances_json"] if instances_json else None,
        )
        return name

    def test_pq_by_hand(self):
        name = self.register()
        output_dir = os.path.join(self.root, "inference")
        evaluator = build_evaluator(eval_cfg(panoptic=True), name, output_dir)
        self.assertIs(type(evaluator), COCOPanopticEvaluator)
        (record,) = DatasetCatalog.get(name)
        results = evaluate(evaluator, [record], [{"panoptic_seg": panoptic_output()}])
        self.assertEqual(set(results["panoptic_seg"]), set(EXPECTED_PQ))
        for key, value in EXPECTED_PQ.items():
            self.assertAlmostEqual(results["panoptic_seg"][key], value, places=4, msg=key)
        # Predictions are written with dataset category ids.
        with open(os.path.join(output_dir, "predictions.json")) as f:
            (annotation,) = json.load(f)["annotations"]
        categories = [s["category_id"] for s in annotation["segments_info"]]
        self.assertEqual(categories, [3, 7, 12, 3])

    def test_perfect_prediction(self):
        name = self.register()
        evaluator = build_evaluator(eval_cfg(panoptic=True), name)
        ids = torch.zeros((H, W), dtype=torch.int32)
        contiguous = {3: 0, 7: 1, 12: 2}
        segments_info = []
        # The crowd region is predicted as a cat: not a FP (see EXPECTED_PQ).
        for i, (_, category_id, _, mask) in enumerate(GT_SEGMENTS):
            ids[torch.from_numpy(mask)] = i + 1
            segments_info.append(
                {"id": i + 1, "isthing": category_id != 12, "category_id": contiguous[category_id]}
            )
        (record,) = DatasetCatalog.get(name)
        results = evaluate(evaluator, [record], [{"panoptic_seg": (ids, segments_info)}])
        for key in EXPECTED_PQ:
            self.assertAlmostEqual(results["panoptic_seg"][key], 100.0, places=4, msg=key)

    def test_pq_and_mask_ap_together(self):
        name = self.register(instances_json=True)
        evaluator = build_evaluator(eval_cfg(panoptic=True, instance=True), name)
        self.assertEqual(kinds(evaluator), [COCOPanopticEvaluator, InstanceSegEvaluator])
        masks = [m for _, _, _, m in PRED_SEGMENTS]
        # The cat, the dog in the sky and the cat on the crowd region, as instances.
        instances = instances_output([masks[0], masks[1], masks[3]], [0, 1, 0], [0.9, 0.8, 0.7])
        (record,) = DatasetCatalog.get(name)
        output = {"panoptic_seg": panoptic_output(), "instances": instances}
        results = evaluate(evaluator, [record], [output])
        self.assertAlmostEqual(results["panoptic_seg"]["PQ"], EXPECTED_PQ["PQ"], places=4)
        # COCO mask IoU counts every pixel: cat 16 / 24 = 0.667, a match at the thresholds
        # 0.50..0.65 (4 of 10): AP_cat = 0.4. The crowd prediction matches the crowd GT and is
        # ignored. The dog is missed: AP_dog = 0. AP = 20, AP50 = (1 + 0) / 2, AP75 = 0.
        segm = results["segm"]
        self.assertAlmostEqual(segm["AP"], 20.0, places=4)
        self.assertAlmostEqual(segm["AP50"], 50.0, places=4)
        self.assertAlmostEqual(segm["AP75"], 0.0, places=4)
        self.assertAlmostEqual(segm["AP-cat"], 40.0, places=4)
        self.assertAlmostEqual(segm["AP-dog"], 0.0, places=4)


# ADE20K-style panoptic classes: 12 classes, the things 5 and 9 (identity map, non-contiguous).
ADE_THINGS = [{"id": 5, "name": "person"}, {"id": 9, "name": "car"}]
ADE_H = ADE_W = 20
ADE_GT = [(5, 0, np.pad(np.ones((6, 6), bool), ((0, 14), (0, 14))))]  # 36 px, top left
ADE_GT.append((9, 0, np.pad(np.ones((4, 4), bool), ((10, 6), (10, 6)))))  # 16 px
# Prediction of the car: 10 of its 16 pixels (rows 10-13 x cols 10-11, rows 10-11 x col 12).
ADE_CAR_PRED = np.zeros((ADE_H, ADE_W), bool)
ADE_CAR_PRED[10:14, 10:12] = True
ADE_CAR_PRED[10:12, 12] = True


class TestInstanceAP(DatasetsTestCase):
    def register_ade_style(self, thing_classes=("person", "car")):
        json_file = os.path.join(self.root, "instances.json")
        write_instances_json(json_file, ADE_THINGS, ADE_GT, height=ADE_H, width=ADE_W)
        name = self.name("ade")
        records = [{"file_name": "a.jpg", "image_id": 1, "height": ADE_H, "width": ADE_W}]
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(
            evaluator_type="ade20k_panoptic_seg",
            json_file=json_file,
            thing_classes=list(thing_classes),
            stuff_classes=[f"class{i}" for i in range(12)],
            thing_dataset_id_to_contiguous_id={5: 5, 9: 9},
            stuff_dataset_id_to_contiguous_id={i: i for i in range(12)},
            ignore_label=255,
        )
        return name, records

    def ade_outputs(self):
        person, car = ADE_GT[0][2], ADE_CAR_PRED
        # A stuff class (3) is predicted too, as when panoptic inference is off.
        return [{"instances": instances_output([person, car, person], [5, 9, 3], [0.9, 0.8, 0.7])}]

    def test_non_contiguous_thing_map_by_hand(self):
        name, records = self.register_ade_style()
        # Records without semantic labels: mIoU is skipped.
        evaluator = build_evaluator(eval_cfg(instance=True, semantic=True), name)
        self.assertIs(type(evaluator), InstanceSegEvaluator)
        with self.assertLogs("semask_d2.evaluation", "WARNING") as logs:
            segm = evaluate(evaluator, records, self.ade_outputs())["segm"]
        self.assertIn(
            "1 predicted instance(s) of classes that are not thing classes", logs.output[0]
        )
        # person: perfect, AP 1 at every IoU threshold. car: IoU 10 / 16 = 0.625, a match at
        # 0.50, 0.55, 0.60 (3 of 10): AP 0.3. AP = (1 + 0.3) / 2, AP50 = 1, AP75 = 0.5.
        # The stuff-class prediction is not scored.
        self.assertAlmostEqual(segm["AP"], 65.0, places=4)
        self.assertAlmostEqual(segm["AP50"], 100.0, places=4)
        self.assertAlmostEqual(segm["AP75"], 50.0, places=4)
        self.assertAlmostEqual(segm["AP-person"], 100.0, places=4)
        self.assertAlmostEqual(segm["AP-car"], 30.0, places=4)

    def test_stock_coco_evaluator_rejects_the_map(self):
        # Why InstanceSegEvaluator exists: detectron2 asserts thing ids 0..N-1.
        name, records = self.register_ade_style()
        evaluator = COCOEvaluator(name, tasks=("segm",))
        with self.assertRaises(AssertionError):
            evaluate(evaluator, records, self.ade_outputs())

    def test_coco_type_with_dataset_category_ids(self):
        # COCO instances JSON with category ids 3 and 7, as a user's data may have.
        json_file = os.path.join(self.root, "instances.json")
        things = [c for c in CATEGORIES if c["isthing"]]
        cat, dog = GT_SEGMENTS[0][3], GT_SEGMENTS[1][3]
        write_instances_json(json_file, things, [(3, 0, cat), (7, 0, dog)])
        os.makedirs(os.path.join(self.root, "images"))
        name = self.name("coco")
        register_coco_instances(name, {}, json_file, os.path.join(self.root, "images"))
        # Built before the dataset is loaded: the builder loads it for the id map (3, 7 -> 0, 1).
        evaluator = build_evaluator(eval_cfg(), name)
        self.assertIs(type(evaluator), InstanceSegEvaluator)
        record = {"file_name": "a.jpg", "image_id": 1, "height": H, "width": W}
        outputs = [{"instances": instances_output([cat, dog], [0, 1], [0.9, 0.8])}]
        segm = evaluate(evaluator, [record], outputs)["segm"]
        self.assertAlmostEqual(segm["AP"], 100.0, places=4)
        self.assertAlmostEqual(segm["AP-dog"], 100.0, places=4)
        # Swapped classes: both predictions miss.
        outputs = [{"instances": instances_output([cat, dog], [1, 0], [0.9, 0.8])}]
        self.assertAlmostEqual(evaluate(evaluator, [record], outputs)["segm"]["AP"], 0.0)

    def test_thing_classes_must_name_every_category(self):
        name, _ = self.register_ade_style(thing_classes=("person", "car", "tree"))
        with self.assertRaisesRegex(DatasetError, "3 names but .*instances.json has 2 cat") as e:
            build_evaluator(eval_cfg(instance=True), name)
        self.assertNotIn("\n", str(e.exception))


CITYSCAPES_THINGS = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
CITY_H = CITY_W = 16
# A car (label id 26, instance 0: 26000) of 12x12 = 144 px, at least the 100 px the official
# script requires, on a road (label id 7).
CITY_CAR = np.pad(np.ones((12, 12), bool), ((2, 2), (2, 2)))


def write_cityscapes_gt(root):
    """gtFine/val/frankfurt/frankfurt_000000_000001_gtFine_{instanceIds,labelIds}.png."""
    gt_dir = os.path.join(root, "gtFine", "val")
    city = os.path.join(gt_dir, "frankfurt")
    os.makedirs(city)
    instance_ids = np.where(CITY_CAR, 26000, 7).astype(np.uint16)  # a 16-bit PNG
    Image.fromarray(instance_ids).save(
        os.path.join(city, "frankfurt_000000_000001_gtFine_instanceIds.png")
    )
    label_ids = np.where(CITY_CAR, 26, 7).astype(np.uint8)
    Image.fromarray(label_ids).save(
        os.path.join(city, "frankfurt_000000_000001_gtFine_labelIds.png")
    )
    return gt_dir


class TestCityscapesInstanceAP(DatasetsTestCase):
    def evaluate_car(self, mask, label):
        gt_dir = write_cityscapes_gt(self.root)
        name = self.name("cityscapes")
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(
            evaluator_type="cityscapes_instance", thing_classes=CITYSCAPES_THINGS, gt_dir=gt_dir
        )
        evaluator = build_evaluator(eval_cfg(), name)
        self.assertIs(type(evaluator), CityscapesInstanceEvaluator)
        inputs = [
            {"file_name": "leftImg8bit/val/frankfurt/frankfurt_000000_000001_leftImg8bit.png"}
        ]
        outputs = [{"instances": instances_output([mask], [label], [0.9], CITY_H, CITY_W)}]
        # cityscapesScripts prints its tables and writes matches.json in the working directory.
        with contextlib.chdir(self.root), contextlib.redirect_stdout(io.StringIO()):
            return evaluate(evaluator, inputs, outputs)["segm"]

    def test_perfect_car(self):
        segm = self.evaluate_car(CITY_CAR, CITYSCAPES_THINGS.index("car"))
        # One class with ground truth (car), found at every threshold; the others are NaN.
        self.assertAlmostEqual(segm["AP"], 100.0, places=4)
        self.assertAlmostEqual(segm["AP50"], 100.0, places=4)

    def test_car_predicted_as_truck(self):
        segm = self.evaluate_car(CITY_CAR, CITYSCAPES_THINGS.index("truck"))
        # car: missed (AP 0). truck: no ground truth, only a FP: NaN, left out of the mean.
        self.assertAlmostEqual(segm["AP"], 0.0, places=4)
        self.assertAlmostEqual(segm["AP50"], 0.0, places=4)


class TestEvaluatorSelection(DatasetsTestCase):
    def register(self, evaluator_type, with_sem_seg=True, **overrides):
        """A panoptic dataset with every file the evaluators check; `overrides` edit metadata."""
        name = self.name(evaluator_type)
        paths = write_panoptic_dataset(os.path.join(self.root, name))
        gt_dir = write_cityscapes_gt(os.path.join(self.root, name))
        record = {"file_name": "a.jpg", "image_id": 1}
        if with_sem_seg:
            record["sem_seg_file_name"] = "a.png"
        DatasetCatalog.register(name, lambda: [record])
        metadata = dict(
            PANOPTIC_METADATA,
            evaluator_type=evaluator_type,
            panoptic_json=paths["panoptic_json"],
            panoptic_root=paths["panoptic_root"],
            json_file=paths["instances_json"],
            gt_dir=gt_dir,
            ignore_label=255,
        )
        metadata.update(overrides)
        if evaluator_type == "cityscapes_panoptic_seg":
            metadata["thing_classes"] = ["car", "truck"]
        MetadataCatalog.get(name).set(**{k: v for k, v in metadata.items() if v is not None})
        return name

    def check(self, evaluator_type, cases, **register_args):
        name = self.register(evaluator_type, **register_args)
        for flags, expected in cases:
            with self.subTest(evaluator_type=evaluator_type, flags=flags):
                self.assertEqual(kinds(build_evaluator(eval_cfg(**flags), name)), expected)

    def test_ade20k_panoptic(self):
        sem, pan, ins = SeMaskSemSegEvaluator, COCOPanopticEvaluator, InstanceSegEvaluator
        cases = [
            # Without SEMANTIC_ON the model returns no "sem_seg": no mIoU.
            (dict(panoptic=True), [pan]),
            (dict(instance=True, semantic=True), [sem, ins]),
            (dict(panoptic=True, instance=True, semantic=True), [sem, pan, ins]),
        ]
        self.check("ade20k_panoptic_seg", cases)

    def test_coco_panoptic(self):
        sem, pan, ins = SeMaskSemSegEvaluator, COCOPanopticEvaluator, InstanceSegEvaluator
        cases = [
            (dict(panoptic=True), [pan]),
            (dict(instance=True, semantic=True), [ins, sem]),
            (dict(panoptic=True, instance=True, semantic=True), [pan, ins, sem]),
        ]
        self.check("coco_panoptic_seg", cases)

    def test_cityscapes_panoptic(self):
        sem, pan, ins = SeMaskSemSegEvaluator, COCOPanopticEvaluator, CityscapesInstanceEvaluator
        cases = [
            (dict(panoptic=True, instance=True, semantic=True), [pan, sem, ins]),
            (dict(semantic=True, official_cityscapes=True), [CityscapesSemSegEvaluator]),
            (dict(instance=True), [ins]),
        ]
        self.check("cityscapes_panoptic_seg", cases)

    def test_semantic_skipped_without_labels(self):
        name = self.register("coco_panoptic_seg", with_sem_seg=False)
        with self.assertLogs("semask_d2.evaluation", "WARNING") as logs:
            evaluator = build_evaluator(eval_cfg(panoptic=True, semantic=True), name)
        self.assertEqual(kinds(evaluator), [COCOPanopticEvaluator])
        self.assertIn("mIoU is not evaluated", logs.output[0])

    def test_nothing_to_evaluate(self):
        name = self.register("coco_panoptic_seg")
        with self.assertRaisesRegex(NotImplementedError, "PANOPTIC_ON"):
            build_evaluator(eval_cfg(), name)

    def test_missing_metadata(self):
        cases = [
            ("panoptic_json", None, dict(panoptic=True), "metadata has no 'panoptic_json'"),
            (
                "stuff_dataset_id_to_contiguous_id",
                None,
                dict(panoptic=True),
                "metadata has no 'stuff_dataset_id_to_contiguous_id'",
            ),
            ("panoptic_root", "/nonexistent", dict(panoptic=True), "folder not found"),
            ("json_file", None, dict(instance=True), "metadata has no 'json_file'.*instances_json"),
            ("json_file", "/nonexistent.json", dict(instance=True), "file not found"),
        ]
        for key, value, flags, message in cases:
            with self.subTest(key=key, value=value):
                name = self.register("coco_panoptic_seg", **{key: value})
                with self.assertRaisesRegex(DatasetError, f"'{name}'.*{message}") as e:
                    build_evaluator(eval_cfg(**flags), name)
                self.assertNotIn("\n", str(e.exception))

    def test_instance_types(self):
        name = self.register("coco")
        self.assertEqual(kinds(build_evaluator(eval_cfg(), name)), [InstanceSegEvaluator])
        name = self.register("cityscapes_instance", thing_classes=CITYSCAPES_THINGS)
        self.assertEqual(kinds(build_evaluator(eval_cfg(), name)), [CityscapesInstanceEvaluator])

    def test_cityscapes_instance_checks(self):
        name = self.register("cityscapes_instance", thing_classes=["car", "boat"])
        with self.assertRaisesRegex(DatasetError, r"\['boat'\] are not Cityscapes label names"):
            build_evaluator(eval_cfg(), name)
        name = self.register("cityscapes_instance", gt_dir=self.root)
        with self.assertRaisesRegex(DatasetError, "no \\*/\\*_gtFine_instanceIds.png under"):
            build_evaluator(eval_cfg(), name)


if __name__ == "__main__":
    unittest.main()

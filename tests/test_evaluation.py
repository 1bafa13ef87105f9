"""
Evaluator selection, SemSegEvaluator on a hand-computed case, checked labels, compact logs,
results as JSON, and test-time augmentation.
"""

import contextlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator
from detectron2.modeling import DatasetMapperTTA

from semask_d2 import add_semask_config
from semask_d2.data import DatasetError
from semask_d2.evaluation import SeMaskSemSegEvaluator, build_evaluator
from semask_d2.modeling.test_time_augmentation import SemanticSegmentorWithTTA

IGNORE = 255
# Hand-made case (rows of a 4x4 image). Class 2 is predicted once but absent from the GT.
GT = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [IGNORE, IGNORE, 1, 1]]
PRED = [[0, 0, 0, 1], [0, 0, 1, 1], [0, 2, 1, 1], [1, 1, 1, 1]]


def register(name, gt_file, evaluator_type="sem_seg", classes=("a", "b", "c"), **metadata):
    DatasetCatalog.register(
        name, lambda: [{"file_name": name + ".jpg", "sem_seg_file_name": gt_file}]
    )
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes),
        ignore_label=IGNORE,
        evaluator_type=evaluator_type,
        **metadata,
    )


def unregister(name):
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def eval_cfg(**test):
    cfg = get_cfg()
    add_semask_config(cfg)
    for key, value in test.items():
        setattr(cfg.TEST, key, value)
    return cfg


def evaluate_pred(evaluator, name, num_classes=3):
    """Evaluate PRED as the prediction for the one image of dataset `name`."""
    evaluator.reset()
    # One-hot scores of PRED: the evaluator takes the argmax over classes.
    scores = nn.functional.one_hot(torch.tensor(PRED), num_classes).permute(2, 0, 1).float()
    evaluator.process([{"file_name": name + ".jpg"}], [{"sem_seg": scores}])
    return evaluator.evaluate()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_logs(names=("detectron2", "semask_d2")):
    """Collect the messages of all records logged under `names`, whatever the logger setup."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


class TestEvaluators(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.gt_file = os.path.join(self.tmp.name, "gt.png")
        Image.fromarray(np.array(GT, dtype=np.uint8)).save(self.gt_file)
        self.names = []

    def tearDown(self):
        for name in self.names:
            unregister(name)
        self.tmp.cleanup()

    def dataset(self, evaluator_type, gt_file=None, **metadata):
        name = f"_test_eval_{evaluator_type}_{len(self.names)}"
        register(name, gt_file or self.gt_file, evaluator_type, **metadata)
        self.names.append(name)
        return name

    def test_sem_seg_type(self):
        evaluator = build_evaluator(eval_cfg(), self.dataset("sem_seg"))
        self.assertIsInstance(evaluator, SeMaskSemSegEvaluator)
        self.assertIsInstance(evaluator, SemSegEvaluator)

    def test_stuff_only_id_map_keeps_contiguous_ids(self):
        # Cityscapes panoptic metadata maps its stuff classes only; PRED also holds class 2.
        name = self.dataset("sem_seg", stuff_dataset_id_to_contiguous_id={7: 0, 8: 1})
        evaluator = build_evaluator(eval_cfg(), name)
        with tempfile.TemporaryDirectory() as out:
            evaluator._output_dir = out
            miou = evaluate_pred(evaluator, name)["sem_seg"]["mIoU"]
            with open(os.path.join(out, "sem_seg_predictions.json")) as f:
                written = {entry["category_id"] for entry in json.load(f)}
        self.assertEqual(written, {0, 1, 2})
        # The hand-made case of test_miou_by_hand: class 2 is absent from the GT.
        self.assertAlmostEqual(miou, 100 * (5 / 7 + 7 / 8) / 2, places=6)

    def test_cityscapes_defaults_to_sem_seg_evaluator_on_train_ids(self):
        evaluator = build_evaluator(eval_cfg(), self.dataset("cityscapes_sem_seg", gt_dir="/none"))
        self.assertIsInstance(evaluator, SemSegEvaluator)

    def test_official_cityscapes_needs_label_ids(self):
        name = self.dataset("cityscapes_sem_seg", gt_dir=self.tmp.name)
        with self.assertRaisesRegex(DatasetError, "_gtFine_labelIds.png.*TEST.OFFICIAL"):
            build_evaluator(eval_cfg(OFFICIAL_CITYSCAPES_EVAL=True), name)

    def test_official_cityscapes_with_label_ids(self):
        city = os.path.join(self.tmp.name, "frankfurt")
        os.makedirs(city)
        Image.new("L", (4, 4)).save(os.path.join(city, "frankfurt_0_0_gtFine_labelIds.png"))
        name = self.dataset("cityscapes_sem_seg", gt_dir=self.tmp.name)
        cfg = eval_cfg(OFFICIAL_CITYSCAPES_EVAL=True)
        if importlib.util.find_spec("cityscapesscripts") is None:
            with self.assertRaisesRegex(DatasetError, "pip install cityscapesscripts"):
                build_evaluator(cfg, name)
        else:
            self.assertIsInstance(build_evaluator(cfg, name), CityscapesSemSegEvaluator)

    def test_unknown_type(self):
        with self.assertRaisesRegex(NotImplementedError, "lvis"):
            build_evaluator(eval_cfg(), self.dataset("lvis"))

    def test_miou_by_hand(self):
        name = self.dataset("sem_seg")
        # GT holds the ignore value 255, which the label check accepts.
        result = evaluate_pred(build_evaluator(eval_cfg(), name), name)["sem_seg"]
        # Class 0: TP 5, FP 1 (row 0, col 2), FN 1 (row 2, col 1) -> 5/7.
        # Class 1: TP 7, FP 0 (row 3 cols 0-1 are ignored), FN 1 -> 7/8.
        # Class 2 is not in the GT: excluded from the mean.
        self.assertAlmostEqual(result["mIoU"], 100 * (5 / 7 + 7 / 8) / 2, places=6)
        self.assertAlmostEqual(result["pACC"], 100 * 12 / 14, places=6)
        self.assertTrue(np.isnan(result["IoU-c"]))

    def test_label_value_outside_classes(self):
        bad_file = os.path.join(self.tmp.name, "bad.png")
        bad = np.array(GT, dtype=np.uint8)
        bad[0, 0] = 7  # 3 classes: valid values are 0..2 and 255
        Image.fromarray(bad).save(bad_file)
        name = self.dataset("sem_seg", gt_file=bad_file)
        evaluator = build_evaluator(eval_cfg(), name)
        pattern = re.escape(bad_file) + r" has value\(s\) 7 outside the classes 0..2.*Fix:"
        with self.assertRaisesRegex(DatasetError, pattern):
            evaluate_pred(evaluator, name)

    def test_results_json(self):
        name = self.dataset("sem_seg")
        output_dir = os.path.join(self.tmp.name, "inference")
        evaluator = build_evaluator(eval_cfg(), name, output_dir)
        results = evaluate_pred(evaluator, name)
        with open(os.path.join(output_dir, "sem_seg_results.json")) as f:
            # Strict JSON: no NaN constants.
            written = json.load(f, parse_constant=lambda c: self.fail(f"{c} in the JSON"))
        self.assertEqual(set(written["sem_seg"]), set(results["sem_seg"]))
        self.assertAlmostEqual(written["sem_seg"]["mIoU"], 100 * (5 / 7 + 7 / 8) / 2, places=6)
        self.assertEqual(written["sem_seg"]["pACC"], results["sem_seg"]["pACC"])
        self.assertIsNone(written["sem_seg"]["IoU-c"])  # NaN: class absent from the GT
        self.assertFalse([f for f in os.listdir(output_dir) if f.endswith(".tmp")])

    def test_compact_logs_and_per_class_table(self):
        # 150 classes (ADE20K): the results dict alone would be a ~30,000-character line.
        classes = [f"class{i}" for i in range(150)]
        for per_class in (False, True):
            name = self.dataset("sem_seg", classes=classes)
            evaluator = build_evaluator(eval_cfg(PRINT_PER_CLASS=per_class), name)
            with captured_logs() as messages:
                evaluate_pred(evaluator, name, num_classes=len(classes))
            lines = [line for message in messages for line in message.splitlines()]
            self.assertLessEqual(max(map(len, lines), default=0), 1000)
            rows = [line for line in lines if re.match(r"\|\s*class\d+\s*\|", line)]
            if not per_class:
                self.assertEqual(rows, [])
                continue
            # One row per class: IoU 5/7 and ACC 5/6 of class 0 (see test_miou_by_hand).
            self.assertEqual(len(rows), len(classes))
            self.assertRegex(rows[0], r"\|\s*class0\s*\|\s*71\.429\s*\|\s*83\.333\s*\|")


class ImageAsScores(nn.Module):
    """Toy model: the scores of class c are image channel c, at the input resolution."""

    def forward(self, batched_inputs):
        return [{"sem_seg": x["image"].float()} for x in batched_inputs]


def toy_image(height, width):
    # Differs along both axes, so a wrongly undone flip would show.
    y, x = np.mgrid[0:height, 0:width]
    return torch.from_numpy(np.stack([x * 5, y * 7, (x * y) % 251]).astype(np.uint8))


class TestTTA(unittest.TestCase):
    def tta(self, min_sizes, flip, softmax, max_size=1000):
        mapper = DatasetMapperTTA(min_sizes=min_sizes, max_size=max_size, flip=flip)
        return SemanticSegmentorWithTTA(ImageAsScores(), tta_mapper=mapper, softmax=softmax)

    def test_single_view_equals_plain_output(self):
        image = toy_image(30, 45)
        plain = ImageAsScores()([{"image": image}])[0]["sem_seg"]
        out = self.tta([30], flip=False, softmax=False)([{"image": image}])[0]["sem_seg"]
        self.assertTrue(torch.equal(out, plain))
        out = self.tta([30], flip=False, softmax=True)([{"image": image}])[0]["sem_seg"]
        self.assertTrue(torch.allclose(out, plain.softmax(0)))

    def test_flip_is_undone(self):
        image = toy_image(30, 45)
        plain = ImageAsScores()([{"image": image}])[0]["sem_seg"]
        out = self.tta([30], flip=True, softmax=False)([{"image": image}])[0]["sem_seg"]
        self.assertTrue(torch.equal(out, plain))

    def test_multi_scale_output_size(self):
        inputs = [{"image": toy_image(30, 45), "height": 61, "width": 89}]
        out = self.tta([16, 40, 64], flip=True, softmax=True)(inputs)
        self.assertEqual(len(out), 1)
        self.assertEqual(tuple(out[0]["sem_seg"].shape), (3, 61, 89))
        # Average of probabilities: still a distribution per pixel.
        self.assertTrue(torch.allclose(out[0]["sem_seg"].sum(0), torch.ones(61, 89)))

    def test_from_config(self):
        cfg = eval_cfg()
        cfg.TEST.AUG.MIN_SIZES = [20, 30]
        cfg.TEST.AUG.FLIP = False
        model = SemanticSegmentorWithTTA(cfg, ImageAsScores())
        self.assertEqual(model.tta_mapper.min_sizes, [20, 30])
        self.assertTrue(model.softmax)
        out = model([{"image": toy_image(30, 45)}])
        self.assertEqual(tuple(out[0]["sem_seg"].shape), (3, 30, 45))


if __name__ == "__main__":
    unittest.main()

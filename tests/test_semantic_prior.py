"""The shared semantic prior decoder and loss, checked against hand computations."""

import math
import unittest

import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from semask_d2 import add_semask_config
from semask_d2.modeling.semantic_prior import SemanticPriorLoss


def log_softmax(values, index):
    return values[index] - math.log(sum(math.exp(v) for v in values))


def two_level_priors():
    # K = 2; a stride-4 map of 2x2 and a stride-8 map of 1x1.
    res2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    res3 = torch.tensor([[[[0.5]], [[-1.0]]]])
    return {"res2_prior": res2, "res3_prior": res3}


class TestSemanticPriorLoss(unittest.TestCase):
    def _loss(self, convention, **kwargs):
        return SemanticPriorLoss(
            in_features=["res3_prior", "res2_prior"],
            in_strides=[8, 4],
            ignore_value=255,
            loss_weight=kwargs.pop("loss_weight", 1.0),
            convention=convention,
            **kwargs,
        ).train()

    def test_detectron2_convention_by_hand(self):
        # align_corners=True keeps the corner values: after summing (res3 is constant after its
        # x2 upsample), the 8x8 map has res2 + res3 at its four corners.
        labels = torch.full((1, 8, 8), 255)
        labels[0, 0, 0] = 0
        labels[0, 7, 7] = 1
        loss = self._loss("detectron2", loss_weight=0.4)(two_level_priors(), labels)["loss_cate"]
        top_left = [1.0 + 0.5, 0.0 - 1.0]
        bottom_right = [4.0 + 0.5, 1.0 - 1.0]
        expected = -(log_softmax(top_left, 0) + log_softmax(bottom_right, 1)) / 2
        self.assertAlmostEqual(loss.item(), 0.4 * expected, places=5)

    def test_mmseg_convention_by_hand(self):
        # align_corners=False to a 4x4 label: pixel (1, 0) samples row 0.25 and column -0.25
        # (clamped to 0): 0.75 * res2[0, 0] + 0.25 * res2[1, 0].
        labels = torch.full((1, 4, 4), 255)
        labels[0, 1, 0] = 1
        labels[0, 3, 3] = 0
        loss = self._loss("mmseg")(two_level_priors(), labels)["loss_cate"]
        pixel_10 = [0.75 * 1.0 + 0.25 * 3.0 + 0.5, 0.0 - 1.0]
        pixel_33 = [4.0 + 0.5, 1.0 - 1.0]
        expected = -(log_softmax(pixel_10, 1) + log_softmax(pixel_33, 0)) / 2
        self.assertAlmostEqual(loss.item(), expected, places=5)

    def test_mmseg_averaging_counts_every_label_pixel(self):
        # The case above, averaged over all 16 label pixels (14 of them ignored), not over 2.
        labels = torch.full((1, 4, 4), 255)
        labels[0, 1, 0] = 1
        labels[0, 3, 3] = 0
        loss = self._loss("mmseg", averaging="mmseg")(two_level_priors(), labels)["loss_cate"]
        pixel_10 = [0.75 * 1.0 + 0.25 * 3.0 + 0.5, 0.0 - 1.0]
        pixel_33 = [4.0 + 0.5, 1.0 - 1.0]
        expected = -(log_softmax(pixel_10, 1) + log_softmax(pixel_33, 0)) / 16
        self.assertAlmostEqual(loss.item(), expected, places=5)
        everything_ignored = torch.full((1, 4, 4), 255)
        module = self._loss("mmseg", averaging="mmseg")
        self.assertEqual(module(two_level_priors(), everything_ignored)["loss_cate"].item(), 0.0)
        with self.assertRaisesRegex(ValueError, "PRIOR_LOSS_AVERAGING"):
            self._loss("mmseg", averaging="mean")

    def test_decode_sizes(self):
        priors = {
            "res2_prior": torch.randn(2, 3, 17, 24),
            "res3_prior": torch.randn(2, 3, 9, 12),
        }
        self.assertEqual(tuple(self._loss("detectron2").decode(priors).shape), (2, 3, 68, 96))
        mmseg = self._loss("mmseg").decode(priors, label_size=(65, 93))
        self.assertEqual(tuple(mmseg.shape), (2, 3, 65, 93))

    def test_labels_padded_with_ignore_for_detectron2(self):
        priors = {"res2_prior": torch.randn(1, 3, 17, 24), "res3_prior": torch.randn(1, 3, 9, 12)}
        module = self._loss("detectron2")
        labels = torch.randint(0, 3, (1, 65, 93))
        padded = torch.full((1, 68, 96), 255)
        padded[:, :65, :93] = labels
        self.assertAlmostEqual(
            module(priors, labels)["loss_cate"].item(),
            module(priors, padded)["loss_cate"].item(),
            places=6,
        )
        with self.assertRaisesRegex(ValueError, "larger than the decoded prior map"):
            module(priors, torch.zeros((1, 70, 96), dtype=torch.long))

    def test_all_ignored_gives_zero_and_keeps_the_graph(self):
        priors = {k: v.requires_grad_() for k, v in two_level_priors().items()}
        loss = self._loss("detectron2")(priors, torch.full((1, 8, 8), 255))["loss_cate"]
        self.assertEqual(loss.item(), 0.0)
        loss.backward()
        self.assertTrue(torch.all(priors["res2_prior"].grad == 0))

    def test_eval_computes_nothing(self):
        module = self._loss("detectron2").eval()
        self.assertEqual(module(two_level_priors(), torch.zeros((1, 8, 8), dtype=torch.long)), {})

    def test_from_config(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 65535
        cfg.MODEL.SEMASK.PRIOR_CONVENTION = "mmseg"
        shapes = {
            "res2": ShapeSpec(channels=16, stride=4),
            "res3_prior": ShapeSpec(channels=5, stride=8),
            "res2_prior": ShapeSpec(channels=5, stride=4),
        }
        module = SemanticPriorLoss(cfg, shapes)
        self.assertEqual(module.in_features, ["res2_prior", "res3_prior"])
        self.assertEqual((module.ignore_value, module.loss_weight), (65535, 0.4))
        self.assertFalse(module.align_corners)
        with self.assertRaisesRegex(ValueError, "convention"):
            SemanticPriorLoss(in_features=["a"], in_strides=[4], convention="caffe")

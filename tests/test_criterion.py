"""SetCriterion: every loss term against hand computations, normalisation and deep supervision."""

import math
import unittest
from unittest import mock

import torch
from torch import nn

from detectron2.utils import comm

from semask_d2.modeling.criterion import BaseSetCriterion, SetCriterion

from model_fixtures import official_cfg

# The four pixel centres of a 1 x 4 mask, (x, y) in grid_sample's [-1, 1]: bilinear reads
# (align_corners False) return the pixels exactly.
PIXEL_CENTRES = torch.tensor([[[-0.75, 0.0], [-0.25, 0.0], [0.25, 0.0], [0.75, 0.0]]])

# K = 2 classes, Q = 3 queries, 1 x 4 masks.
LOGITS = [[0.0, 3.0, 0.0], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]]
MASKS = [[-4.0, -1.0, 2.0, 4.0], [0.5, -0.5, 0.5, -0.5], [3.0, 1.0, -2.0, -4.0]]
LABELS = [0, 1]
TARGETS = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
# Query 0 <-> target 1, query 2 <-> target 0; query 1 is "no object".
INDICES = (torch.tensor([0, 2]), torch.tensor([1, 0]))
NO_OBJECT_WEIGHT = 0.1


def nll(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def mean_bce(mask, target):
    return sum(max(x, 0) - x * t + math.log1p(math.exp(-abs(x))) for x, t in zip(mask, target)) / 4


def dice(mask, target):
    probs = [1 / (1 + math.exp(-x)) for x in mask]
    inter = sum(p * t for p, t in zip(probs, target))
    return 1 - (2 * inter + 1) / (sum(probs) + sum(target) + 1)


class FixedMatcher(nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def criterion(indices, deep_supervision=True):
    return SetCriterion(
        num_classes=2,
        matcher=FixedMatcher(indices),
        weight_dict={},
        eos_coef=NO_OBJECT_WEIGHT,
        num_points=4,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        deep_supervision=deep_supervision,
    )


def fixed_points():
    return mock.patch.object(
        SetCriterion,
        "_uncertain_points",
        side_effect=lambda logits: PIXEL_CENTRES.expand(logits.shape[0], -1, -1),
        autospec=False,
    )


def outputs(batch=1):
    logits = torch.tensor([LOGITS] * batch, requires_grad=True)
    masks = torch.tensor([MASKS] * batch).view(batch, 3, 1, 4).requires_grad_()
    return {"pred_logits": logits, "pred_masks": masks}


def hand_target():
    return {"labels": torch.tensor(LABELS), "masks": torch.tensor(TARGETS).view(2, 1, 4)}


def empty_target():
    return {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, 4)}


def hand_loss_ce(images_matched):
    """Weighted mean over queries of images given as {query: label} (others "no object")."""
    total, weight = 0.0, 0.0
    for matched in images_matched:
        for q, logits in enumerate(LOGITS):
            label = matched.get(q, 2)
            w = NO_OBJECT_WEIGHT if label == 2 else 1.0
            total += w * nll(logits, label)
            weight += w
    return total / weight


class TestSetCriterion(unittest.TestCase):
    def test_each_term_by_hand(self):
        with fixed_points():
            losses = criterion([INDICES])(outputs(), [hand_target()])
        self.assertEqual(set(losses), {"loss_ce", "loss_mask", "loss_dice"})
        self.assertAlmostEqual(losses["loss_ce"].item(), hand_loss_ce([{0: 1, 2: 0}]), places=5)
        pairs = [(MASKS[0], TARGETS[1]), (MASKS[2], TARGETS[0])]
        loss_mask = sum(mean_bce(m, t) for m, t in pairs) / 2
        loss_dice = sum(dice(m, t) for m, t in pairs) / 2
        self.assertAlmostEqual(losses["loss_mask"].item(), loss_mask, places=5)
        self.assertAlmostEqual(losses["loss_dice"].item(), loss_dice, places=5)

    def test_num_masks_over_the_batch(self):
        # Image 1 has one target (the left half), matched to query 2: three masks in all.
        second = {"labels": torch.tensor([0]), "masks": torch.tensor([TARGETS[0]]).view(1, 1, 4)}
        indices = [INDICES, (torch.tensor([2]), torch.tensor([0]))]
        with fixed_points():
            losses = criterion(indices)(outputs(batch=2), [hand_target(), second])
        pairs = [(MASKS[0], TARGETS[1]), (MASKS[2], TARGETS[0]), (MASKS[2], TARGETS[0])]
        self.assertAlmostEqual(
            losses["loss_mask"].item(), sum(mean_bce(m, t) for m, t in pairs) / 3, places=5
        )
        self.assertAlmostEqual(
            losses["loss_dice"].item(), sum(dice(m, t) for m, t in pairs) / 3, places=5
        )

    def test_num_masks_across_processes(self):
        targets = [hand_target(), {"labels": torch.tensor([1]), "masks": torch.zeros(1, 1, 4)}]
        self.assertEqual(SetCriterion._num_masks(targets, torch.device("cpu")), 3.0)
        # Two processes, the other one with 5 masks: mean 4 per process.
        with (
            mock.patch.object(comm, "get_world_size", return_value=2),
            mock.patch("torch.distributed.all_reduce", side_effect=lambda t: t.add_(5.0)),
        ):
            self.assertEqual(SetCriterion._num_masks(targets, torch.device("cpu")), 4.0)
        self.assertEqual(SetCriterion._num_masks([empty_target()], torch.device("cpu")), 1.0)

    def test_deep_supervision_keys(self):
        out = outputs()
        out["aux_outputs"] = [outputs() for _ in range(3)]
        with fixed_points():
            losses = criterion([INDICES])(out, [hand_target()])
            without = criterion([INDICES], deep_supervision=False)(out, [hand_target()])
        names = ["loss_ce", "loss_mask", "loss_dice"]
        expected = set(names) | {f"{n}_{i}" for n in names for i in range(3)}
        self.assertEqual(set(losses), expected)
        self.assertEqual(set(without), set(names))
        for name in names:
            self.assertAlmostEqual(losses[f"{name}_2"].item(), losses[name].item(), places=6)

    def test_image_without_targets(self):
        indices = [INDICES, (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))]
        out = outputs(batch=2)
        with fixed_points():
            losses = criterion(indices)(out, [hand_target(), empty_target()])
        self.assertAlmostEqual(losses["loss_ce"].item(), hand_loss_ce([{0: 1, 2: 0}, {}]), places=5)
        pairs = [(MASKS[0], TARGETS[1]), (MASKS[2], TARGETS[0])]
        self.assertAlmostEqual(
            losses["loss_mask"].item(), sum(mean_bce(m, t) for m, t in pairs) / 2, places=5
        )
        sum(losses.values()).backward()
        self.assertTrue(bool(torch.isfinite(out["pred_masks"].grad).all()))

    def test_batch_without_targets(self):
        empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
        out = outputs()
        losses = criterion([empty])(out, [empty_target()])
        self.assertEqual(losses["loss_mask"].item(), 0.0)
        self.assertEqual(losses["loss_dice"].item(), 0.0)
        self.assertAlmostEqual(losses["loss_ce"].item(), hand_loss_ce([{}]), places=5)
        sum(losses.values()).backward()
        self.assertEqual(out["pred_masks"].grad.abs().sum().item(), 0.0)

    def test_target_masks_padded_to_the_batch(self):
        small = {"labels": torch.tensor([0]), "masks": torch.ones(1, 1, 2, dtype=torch.bool)}
        large = {"labels": torch.tensor([1]), "masks": torch.ones(1, 2, 3, dtype=torch.bool)}
        index = (torch.tensor([0]), torch.tensor([0]))
        padded = BaseSetCriterion._matched_target_masks([small, large], [index, index], torch.float)
        expected = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]] * 2])
        self.assertTrue(torch.equal(padded, expected))

    def test_from_config_end_to_end(self):
        # The Mask2Former recipe of the official SeMask-Mask2Former dump (10 predictions).
        cfg = official_cfg()
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
        cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 16
        model = SetCriterion(cfg)
        torch.testing.assert_close(
            model.state_dict()["empty_weight"], torch.tensor([1.0, 1.0, 0.1])
        )
        names = ["loss_ce", "loss_mask", "loss_dice"]
        expected = {n: w for n, w in zip(names, [2.0, 5.0, 5.0])}
        expected.update({f"{n}_{i}": expected[n] for n in names for i in range(9)})
        self.assertEqual(model.weight_dict, expected)

        torch.manual_seed(0)
        preds = [
            {"pred_logits": torch.randn(2, 3, 3), "pred_masks": torch.randn(2, 3, 2, 4)}
            for _ in range(2)
        ]
        for tensor in [t for pred in preds for t in pred.values()]:
            tensor.requires_grad_()
        out = dict(preds[0], aux_outputs=preds[1:])
        masks = torch.zeros(2, 8, 16)
        masks[0, :4], masks[1, 4:] = 1.0, 1.0
        targets = [{"labels": torch.tensor([0, 1]), "masks": masks}, empty_target()]
        targets[1]["masks"] = torch.zeros(0, 8, 16)
        losses = model(out, targets)
        self.assertEqual(len(losses), 6)
        sum(losses.values()).backward()
        self.assertGreater(out["aux_outputs"][0]["pred_masks"].grad.abs().sum().item(), 0)


if __name__ == "__main__":
    unittest.main()

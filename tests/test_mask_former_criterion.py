"""MaskFormer's focal + dice criterion and its matcher, on hand-computed cases."""

import math
import unittest

import torch

from semask_d2.modeling.mask_former_criterion import MaskFormerSetCriterion, focal_mask_loss
from semask_d2.modeling.mask_former_matcher import (
    MaskFormerHungarianMatcher,
    batch_sigmoid_focal_cost,
)

from model_fixtures import official_cfg

LN2, LN3 = math.log(2), math.log(3)
# Two pixels with logits 0 and ln 3, i.e. probabilities 1/2 and 3/4.
LOGITS = torch.tensor([[0.0, LN3]])
# Focal loss (alpha 0.25, gamma 2) of each pixel against target 1 and against target 0:
# t = 1: 0.25 * (1 - p)^2 * -ln p;  t = 0: 0.75 * p^2 * -ln(1 - p).
POS = [0.25 * 0.25 * LN2, 0.25 * (1 / 16) * math.log(4 / 3)]
NEG = [0.75 * 0.25 * LN2, 0.75 * (9 / 16) * math.log(4)]


class TestFocalAndDice(unittest.TestCase):
    def test_focal_loss_by_hand(self):
        targets = torch.tensor([[1.0, 0.0]])
        # Mean over the two pixels; one mask, num_masks 1.
        expected = (POS[0] + NEG[1]) / 2
        self.assertAlmostEqual(focal_mask_loss(LOGITS, targets, 1.0).item(), expected, places=6)
        # Summed over masks, divided by num_masks.
        two = focal_mask_loss(LOGITS.repeat(2, 1), targets.repeat(2, 1), 4.0)
        self.assertAlmostEqual(two.item(), expected / 2, places=6)

    def test_focal_cost_of_every_pair(self):
        targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        cost = batch_sigmoid_focal_cost(LOGITS, targets)
        expected = [(POS[0] + NEG[1]) / 2, (NEG[0] + POS[1]) / 2, (POS[0] + POS[1]) / 2]
        torch.testing.assert_close(cost, torch.tensor([expected]), atol=1e-6, rtol=0)
        # Equal to the loss of the same pair.
        for j in range(3):
            loss = focal_mask_loss(LOGITS, targets[j : j + 1], 1.0)
            self.assertAlmostEqual(cost[0, j].item(), loss.item(), places=6)

    def test_full_resolution_mask_losses(self):
        # One 1 x 2 prediction with logits [0, ln 3], upsampled (bilinear, half-pixel centres)
        # to the 1 x 4 target: [0, ln3 / 4, 3 ln3 / 4, ln3].
        criterion = MaskFormerSetCriterion(
            num_classes=2,
            matcher=MaskFormerHungarianMatcher(),
            weight_dict={},
            eos_coef=0.1,
        )
        src = LOGITS.view(1, 1, 2)
        tgt = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
        logits, labels = criterion.mask_pairs(src, tgt)
        up = torch.tensor([[0.0, LN3 / 4, 3 * LN3 / 4, LN3]])
        torch.testing.assert_close(logits, up, atol=1e-6, rtol=0)
        torch.testing.assert_close(labels, tgt.flatten(1))
        p = torch.sigmoid(up)[0].tolist()
        focal = (
            0.25 * (1 - p[0]) ** 2 * -math.log(p[0])
            + 0.25 * (1 - p[1]) ** 2 * -math.log(p[1])
            + 0.75 * p[2] ** 2 * -math.log(1 - p[2])
            + 0.75 * p[3] ** 2 * -math.log(1 - p[3])
        ) / 4
        dice = 1 - (2 * (p[0] + p[1]) + 1) / (sum(p) + 2 + 1)
        indices = [(torch.tensor([0]), torch.tensor([0]))]
        targets = [{"labels": torch.tensor([1]), "masks": tgt}]
        losses = criterion.loss_masks(src[None], targets, indices, num_masks=1.0)
        self.assertAlmostEqual(losses["loss_mask"].item(), focal, places=6)
        self.assertAlmostEqual(losses["loss_dice"].item(), dice, places=6)


class TestMaskFormerMatcher(unittest.TestCase):
    def test_costs_on_targets_downsampled_to_the_prediction(self):
        matcher = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
        # 1 x 2 predictions, 2 x 4 targets: nearest keeps row 0, columns 0 and 2, so the odd
        # columns and the second row, all "wrong", do not count.
        masks = LOGITS.view(1, 1, 2)
        tgt = torch.tensor([[[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]])
        logits = torch.tensor([[0.0, LN3, 0.0]])  # softmax: 1/5, 3/5, 1/5
        cost = matcher.cost_matrix(logits, masks, torch.tensor([1]), tgt)
        focal = (POS[0] + NEG[1]) / 2
        dice = 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1)
        self.assertAlmostEqual(cost.item(), 20 * focal - 3 / 5 + dice, places=5)

    def test_known_assignment(self):
        matcher = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
        big = 8.0
        # Query 0 predicts the right half, query 1 nothing, query 2 the left half; uniform
        # classes, so the masks decide: target 0 (left) -> query 2, target 1 (right) -> query 0.
        masks = torch.tensor(
            [[[-big, -big, big, big]], [[-big] * 4], [[big, big, -big, -big]]]
        ).unsqueeze(0)
        targets = [
            {
                "labels": torch.tensor([0, 1]),
                "masks": torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]]),
            }
        ]
        outputs = {"pred_logits": torch.zeros(1, 3, 3), "pred_masks": masks}
        ((queries, tgts),) = matcher(outputs, targets)
        self.assertEqual(dict(zip(tgts.tolist(), queries.tolist())), {0: 2, 1: 0})

    def test_from_the_official_dump(self):
        matcher = MaskFormerHungarianMatcher(official_cfg("semask_swinL_maskformer_ade20k.yaml"))
        self.assertEqual((matcher.cost_class, matcher.cost_mask, matcher.cost_dice), (1, 20, 1))
        self.assertEqual((matcher.focal_alpha, matcher.focal_gamma), (0.25, 2.0))


if __name__ == "__main__":
    unittest.main()

"""Hungarian matcher: costs against hand computations and a known optimal assignment."""

import math
import unittest
from unittest import mock

import torch


from semask_d2.modeling.matcher import HungarianMatcher

from model_fixtures import official_cfg

# The four pixel centres of a 1 x 4 mask, (x, y) in grid_sample's [-1, 1]: bilinear reads
# (align_corners False) return the pixels exactly.
PIXEL_CENTRES = torch.tensor([[[-0.75, 0.0], [-0.25, 0.0], [0.25, 0.0], [0.75, 0.0]]])


def bce(x, t):
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def hand_cost(logits, mask, label, target, weights):
    """Matching cost of one query against one target, from the formulas."""
    w_class, w_mask, w_dice = weights
    cost_class = -softmax(logits)[label]
    cost_mask = sum(bce(x, t) for x, t in zip(mask, target)) / len(mask)
    probs = [sigmoid(x) for x in mask]
    inter = sum(p * t for p, t in zip(probs, target))
    cost_dice = 1 - (2 * inter + 1) / (sum(probs) + sum(target) + 1)
    return w_class * cost_class + w_mask * cost_mask + w_dice * cost_dice


# K = 2 classes. Query 0 predicts class 1 on the right half, query 2 class 0 on the left half,
# query 1 "no object" with an uncertain mask: the optimum is unique and obvious.
LOGITS = [[0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]]
MASKS = [[-4.0, -4.0, 4.0, 4.0], [0.5, -0.5, 0.5, -0.5], [4.0, 4.0, -4.0, -4.0]]
LABELS = [0, 1]
TARGETS = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
WEIGHTS = (2.0, 5.0, 5.0)


def hand_case():
    outputs = {
        "pred_logits": torch.tensor([LOGITS]),
        "pred_masks": torch.tensor([MASKS]).view(1, 3, 1, 4),
    }
    targets = [{"labels": torch.tensor(LABELS), "masks": torch.tensor(TARGETS).view(2, 1, 4)}]
    return outputs, targets


class TestHungarianMatcher(unittest.TestCase):
    def setUp(self):
        self.matcher = HungarianMatcher(
            cost_class=WEIGHTS[0], cost_mask=WEIGHTS[1], cost_dice=WEIGHTS[2], num_points=4
        )
        self.fixed_points = mock.patch.object(
            self.matcher, "_random_points", return_value=PIXEL_CENTRES
        )

    def test_cost_matrix_by_hand(self):
        outputs, targets = hand_case()
        with self.fixed_points:
            cost = self.matcher.cost_matrix(
                outputs["pred_logits"][0],
                outputs["pred_masks"][0],
                targets[0]["labels"],
                targets[0]["masks"],
            )
        expected = [
            [hand_cost(LOGITS[q], MASKS[q], LABELS[t], TARGETS[t], WEIGHTS) for t in range(2)]
            for q in range(3)
        ]
        self.assertEqual(cost.dtype, torch.float32)
        torch.testing.assert_close(cost, torch.tensor(expected), rtol=1e-5, atol=1e-5)

    def test_known_assignment(self):
        outputs, targets = hand_case()
        with self.fixed_points:
            ((rows, cols),) = self.matcher(outputs, targets)
        self.assertEqual(rows.dtype, torch.int64)
        self.assertEqual(cols.dtype, torch.int64)
        self.assertEqual(rows.tolist(), [0, 2])
        self.assertEqual(cols.tolist(), [1, 0])

    def test_random_points_and_autocast(self):
        # Enough random points to make the obvious optimum certain; bfloat16 autocast is
        # switched off inside the matcher.
        matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=64)
        outputs, targets = hand_case()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ((rows, cols),) = matcher(outputs, targets)
        self.assertEqual((rows.tolist(), cols.tolist()), ([0, 2], [1, 0]))

    def test_image_without_targets(self):
        outputs, targets = hand_case()
        outputs = {k: torch.cat([v, v]) for k, v in outputs.items()}
        targets.append({"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, 4)})
        with self.fixed_points:
            first, second = self.matcher(outputs, targets)
        self.assertEqual(first[0].tolist(), [0, 2])
        self.assertEqual((len(second[0]), len(second[1])), (0, 0))
        self.assertEqual(second[0].dtype, torch.int64)

    def test_from_config(self):
        # The Mask2Former recipe of the official SeMask-Mask2Former dump.
        cfg = official_cfg()
        matcher = HungarianMatcher(cfg)
        self.assertEqual(
            (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points),
            (2.0, 5.0, 5.0, 12544),
        )


if __name__ == "__main__":
    unittest.main()

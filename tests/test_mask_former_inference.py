"""Semantic, panoptic and instance inference on hand-made cases."""

import math
import unittest

import torch

from semask_d2.modeling.mask_former_inference import (
    instance_inference,
    panoptic_inference,
    semantic_inference,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


class TestSemanticInference(unittest.TestCase):
    def test_hand_case(self):
        # Q = 2, K = 2 (+ no object), 1 x 2 pixels.
        mask_cls = torch.tensor([[LN2, 0.0, 0.0], [0.0, LN2, 0.0]])  # [.5 .25 .25], [.25 .5 .25]
        mask_pred = torch.tensor([[[0.0, LN3]], [[LN3, 0.0]]])  # sigmoid [.5 .75], [.75 .5]
        expected = torch.tensor(
            [
                [[0.5 * 0.5 + 0.25 * 0.75, 0.5 * 0.75 + 0.25 * 0.5]],
                [[0.25 * 0.5 + 0.5 * 0.75, 0.25 * 0.75 + 0.5 * 0.5]],
            ]
        )
        torch.testing.assert_close(semantic_inference(mask_cls, mask_pred), expected)


class TestPanopticInference(unittest.TestCase):
    # K = 3: class 0 is a thing, classes 1 and 2 are stuff. 1 x 4 pixels.
    MASK_CLS = [
        [10.0, 0.0, 0.0, 0.0],  # thing 0, confident
        [0.0, 10.0, 0.0, 0.0],  # stuff 1
        [0.0, 10.0, 0.0, 0.0],  # stuff 1 again: merged with the previous segment
        [0.0, 0.0, 0.0, 10.0],  # no object: dropped
        [0.0, 0.0, 1.0, 0.0],  # stuff 2 with a score below the threshold: dropped
        [8.0, 0.0, 0.0, 0.0],  # thing 0, loses pixel 0 to query 0: keeps 1 of its 2 pixels
    ]
    MASK_PRED = [
        [5.0, -5.0, -5.0, -5.0],
        [-5.0, 5.0, -5.0, -5.0],
        [-5.0, -5.0, 5.0, -5.0],
        [5.0, 5.0, 5.0, 5.0],
        [5.0, 5.0, 5.0, 5.0],
        [5.0, -5.0, -5.0, 5.0],
    ]

    def _run(self, overlap_threshold):
        return panoptic_inference(
            torch.tensor(self.MASK_CLS),
            torch.tensor(self.MASK_PRED).view(6, 1, 4),
            object_mask_threshold=0.8,
            overlap_threshold=overlap_threshold,
            thing_ids={0},
        )

    def test_segments_and_stuff_merge(self):
        panoptic_seg, segments_info = self._run(overlap_threshold=0.8)
        self.assertEqual(panoptic_seg.dtype, torch.int32)
        self.assertEqual(panoptic_seg.tolist(), [[1, 2, 2, 0]])
        self.assertEqual(
            segments_info,
            [
                {"id": 1, "isthing": True, "category_id": 0},
                {"id": 2, "isthing": False, "category_id": 1},
            ],
        )

    def test_overlap_threshold(self):
        # Query 5 keeps half of its confident area: kept only below a 0.5 threshold.
        panoptic_seg, segments_info = self._run(overlap_threshold=0.4)
        self.assertEqual(panoptic_seg.tolist(), [[1, 2, 2, 3]])
        self.assertEqual(segments_info[-1], {"id": 3, "isthing": True, "category_id": 0})

    def test_nothing_kept(self):
        mask_cls = torch.tensor([[0.0, 0.0, 0.0, 10.0]])
        panoptic_seg, segments_info = panoptic_inference(
            mask_cls,
            torch.ones(1, 2, 3),
            object_mask_threshold=0.8,
            overlap_threshold=0.8,
            thing_ids=set(),
        )
        self.assertEqual(panoptic_seg.tolist(), [[0, 0, 0], [0, 0, 0]])
        self.assertEqual(segments_info, [])


class TestInstanceInference(unittest.TestCase):
    # Q = 2, K = 2: class scores [.6 .3] and [.1 .8] (no object .1 each).
    MASK_CLS = torch.tensor([[math.log(6.0), LN3, 0.0], [0.0, math.log(8.0), 0.0]])
    # Query 0 covers pixel 0 (sigmoid .75); query 1 both pixels (sigmoid .75 and .8).
    MASK_PRED = torch.tensor([[[LN3, -1.0]], [[LN3, math.log(4.0)]]])

    def test_topk(self):
        result = instance_inference(self.MASK_CLS, self.MASK_PRED, topk=3)
        self.assertEqual(result.image_size, (1, 2))
        self.assertEqual(result.pred_classes.tolist(), [1, 0, 1])
        torch.testing.assert_close(
            result.scores, torch.tensor([0.8 * 0.775, 0.6 * 0.75, 0.3 * 0.75])
        )
        self.assertEqual(result.pred_masks.tolist(), [[[1.0, 1.0]], [[1.0, 0.0]], [[1.0, 0.0]]])
        self.assertEqual(result.pred_boxes.tensor.tolist(), [[0.0] * 4] * 3)

    def test_things_only(self):
        result = instance_inference(self.MASK_CLS, self.MASK_PRED, topk=3, thing_ids={1})
        self.assertEqual(result.pred_classes.tolist(), [1, 1])
        torch.testing.assert_close(result.scores, torch.tensor([0.8 * 0.775, 0.3 * 0.75]))
        self.assertEqual(len(result), 2)

    def test_empty_mask_scores_zero(self):
        result = instance_inference(self.MASK_CLS, torch.full((2, 1, 2), -3.0), topk=1)
        self.assertEqual(result.scores.tolist(), [0.0])


if __name__ == "__main__":
    unittest.main()

"""Point sampling of the Mask2Former losses: target masks read as stored, unsorted selection."""

import unittest

import torch

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

from semask_d2.modeling.criterion import SetCriterion
from semask_d2.modeling.mask_point_sampling import sample_masks


class TestSampleMasks(unittest.TestCase):
    def test_by_hand(self):
        # 2x2 mask [[1, 0], [0, 0]]: pixel centres at 0.25 and 0.75. The centre of the image
        # blends the four pixels equally; a point at the first centre reads it; a point
        # half a pixel outside reads half of the edge pixel (zero padding).
        mask = torch.tensor([[[True, False], [False, False]]])
        coords = torch.tensor([[[0.5, 0.5], [0.25, 0.25], [0.0, 0.25]]])
        torch.testing.assert_close(sample_masks(mask, coords), torch.tensor([[0.25, 1.0, 0.5]]))

    def test_equals_point_sample_of_float_masks(self):
        gen = torch.Generator().manual_seed(0)
        masks = torch.rand(7, 37, 53, generator=gen) > 0.5
        # Points inside and up to 10 % outside the image.
        for shared in (True, False):
            coords = torch.rand(1 if shared else 7, 500, 2, generator=gen) * 1.2 - 0.1
            if shared:
                want = point_sample(masks.float()[None], coords, align_corners=False)[0]
            else:
                want = point_sample(masks.float()[:, None], coords, align_corners=False)[:, 0]
            with self.subTest(shared=shared):
                torch.testing.assert_close(sample_masks(masks, coords), want, atol=1e-5, rtol=0)


class TestUncertainPoints(unittest.TestCase):
    def test_same_points_as_detectron2(self):
        criterion = SetCriterion(
            num_classes=3,
            matcher=torch.nn.Identity(),
            weight_dict={},
            eos_coef=0.1,
            num_points=40,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
        )
        logits = torch.randn(4, 1, 9, 11, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)
        got = criterion._uncertain_points(logits)
        torch.manual_seed(5)
        want = get_uncertain_point_coords_with_randomness(logits, lambda x: -x.abs(), 40, 3.0, 0.75)
        self.assertEqual(got.shape, (4, 40, 2))
        # The same random draws; the 30 uncertain points in another order, then the 10 uniform.
        torch.testing.assert_close(got[:, 30:], want[:, 30:], atol=0, rtol=0)
        for g, w in zip(got[:, :30], want[:, :30]):
            self.assertEqual(sorted(map(tuple, g.tolist())), sorted(map(tuple, w.tolist())))


if __name__ == "__main__":
    unittest.main()

"""Point sampling of the Mask2Former losses: target masks read as stored, unsorted selection."""

import unittest

import torch

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

from semask_d2.modeling.criterion import SetCriterion
from semask_d2.modeling.mask_point_sampling import MaskTable, sample_masks, uniform_grid


class TestSampleMasks(unittest.TestCase):
    def test_by_hand(self):
        # 2x2 mask [[1, 0], [0, 0]]: pixel centres at 0.25 and 0.75. The centre of the image
        # blends the four pixels equally; a point at the first centre reads it; a point
        # half a pixel outside reads half of the edge pixel (zero padding).
        mask = torch.tensor([[[True, False], [False, False]]])
        grid = torch.tensor([[[0.0, 0.0], [-0.5, -0.5], [-1.0, -0.5]]])
        torch.testing.assert_close(sample_masks(mask, grid), torch.tensor([[0.25, 1.0, 0.5]]))

    def test_equals_point_sample_of_float_masks(self):
        gen = torch.Generator().manual_seed(0)
        masks = torch.rand(7, 37, 53, generator=gen) > 0.5
        # Points inside and up to 60 % outside the image (beyond the one-pixel border).
        for shared in (True, False):
            coords = torch.rand(1 if shared else 7, 500, 2, generator=gen) * 2.2 - 0.6
            if shared:
                want = point_sample(masks.float()[None], coords, align_corners=False)[0]
            else:
                want = point_sample(masks.float()[:, None], coords, align_corners=False)[:, 0]
            with self.subTest(shared=shared):
                got = sample_masks(masks, 2 * coords - 1)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


class TestMaskTable(unittest.TestCase):
    def test_neighbourhood_bits_by_hand(self):
        # 2x2 mask [[1, 0], [1, 1]] with its zero border (1 before, 2 after): entry (y, x) of
        # the bordered 5x5 table holds pixels (x, y), (x+1, y), (x, y+1), (x+1, y+1) as bits 0-3.
        table = MaskTable([torch.tensor([[[True, False], [True, True]]])])
        quads = table.table.view(5, 5)
        self.assertEqual(quads[0, :3].tolist(), [0b1000, 0b0100, 0])
        self.assertEqual(quads[1, :3].tolist(), [0b1010, 0b1101, 0b0100])
        self.assertEqual(quads[2, :3].tolist(), [0b0010, 0b0011, 0b0001])

    def test_images_of_different_sizes(self):
        # The criterion reads matched masks of several images at points normalised to the
        # largest size: the small image's masks are zero beyond their own size.
        small = torch.ones(2, 2, 2, dtype=torch.bool)
        large = torch.ones(1, 2, 4, dtype=torch.bool)
        table = MaskTable([small, large])
        # Pixel centres of a 2x4 image: x = -0.75 .. 0.75, y = -0.5, 0.5.
        grid = torch.tensor([[[-0.75, -0.5], [-0.25, 0.5], [0.25, -0.5], [0.75, 0.5]]])
        rows = torch.cat([table.rows(1, torch.tensor([0])), table.rows(0, torch.tensor([1]))])
        got = table.sample(grid.expand(2, -1, -1), rows, (2, 4))
        self.assertEqual(got.tolist(), [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
        # Each image's own masks at points normalised to its own size (2x2 pixel centres).
        centres = torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]])
        self.assertEqual(table.image(0).sample(centres).tolist(), [[1.0, 1.0]] * 2)
        self.assertEqual(len(table.image(1)), 1)

    def test_uniform_grid_is_twice_rand_minus_one(self):
        torch.manual_seed(3)
        want = 2 * torch.rand(5, 1000, 2) - 1
        torch.manual_seed(3)
        self.assertTrue(torch.equal(uniform_grid(5, 1000, 2), want))


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
        # The same random draws, in [-1, 1] exactly; the 30 uncertain points in another order,
        # then the 10 uniform.
        want = 2 * want - 1
        torch.testing.assert_close(got[:, 30:], want[:, 30:], atol=0, rtol=0)
        for g, w in zip(got[:, :30], want[:, :30]):
            self.assertEqual(sorted(map(tuple, g.tolist())), sorted(map(tuple, w.tolist())))


if __name__ == "__main__":
    unittest.main()

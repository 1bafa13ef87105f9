"""The fused point losses of Mask2Former: values and gradients of the plain composition."""

import math
import unittest

import torch

from semask_d2.modeling.mask_point_sampling import grid_sample_points
from semask_d2.modeling.point_mask_losses import dice_loss, point_mask_losses, sigmoid_ce_loss


class TestPointMaskLosses(unittest.TestCase):
    def test_values_and_gradients_equal_autograd(self):
        gen = torch.Generator().manual_seed(0)
        masks = (3 * torch.randn(5, 7, 9, generator=gen, dtype=torch.float64)).requires_grad_()
        # Points inside and outside the maps; one mask without foreground.
        grid = torch.rand(5, 40, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2
        labels = (torch.rand(5, 40, generator=gen, dtype=torch.float64) > 0.6).double()
        labels[2] = 0
        loss_mask, loss_dice = point_mask_losses(masks, grid, labels, 3.0)
        # Different upstream weights for the two losses, as the weight dict gives them.
        torch.autograd.backward([loss_mask, loss_dice], [torch.tensor(5.0), torch.tensor(2.0)])
        ours = masks.grad.clone()

        masks.grad = None
        logits = grid_sample_points(masks[:, None], grid)[:, 0]
        want_mask = sigmoid_ce_loss(logits, labels, 3.0)
        want_dice = dice_loss(logits, labels, 3.0)
        (5 * want_mask + 2 * want_dice).backward()
        self.assertEqual(loss_mask.item(), want_mask.item())
        self.assertEqual(loss_dice.item(), want_dice.item())
        self.assertGreater(masks.grad.abs().sum().item(), 0)
        torch.testing.assert_close(ours, masks.grad, rtol=0, atol=1e-12)

    def test_by_hand(self):
        # One mask read at its single pixel: logit 0 gives s = 1/2. BCE against 1 is ln 2;
        # dice = 1 - (2 * 1/2 + 1) / (1/2 + 1 + 1) = 1/5.
        masks = torch.zeros(1, 1, 1, requires_grad=True)
        grid = torch.zeros(1, 1, 2)
        loss_mask, loss_dice = point_mask_losses(masks, grid, torch.ones(1, 1), 1.0)
        self.assertAlmostEqual(loss_mask.item(), math.log(2), places=6)
        self.assertAlmostEqual(loss_dice.item(), 0.2, places=6)
        loss_mask.backward()
        # d BCE / d logit = s - t = -1/2.
        self.assertAlmostEqual(masks.grad.item(), -0.5, places=6)


if __name__ == "__main__":
    unittest.main()

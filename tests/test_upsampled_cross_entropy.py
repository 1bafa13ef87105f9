"""The banded cross-entropy of upsampled logits equals interpolate + cross_entropy."""

import math
import unittest

import torch
import torch.nn.functional as F

from semask_d2.modeling import upsampled_cross_entropy as uce


def reference(logits, targets, align_corners, ignore_value=255):
    upsampled = F.interpolate(
        logits, size=targets.shape[-2:], mode="bilinear", align_corners=align_corners
    )
    return F.cross_entropy(upsampled, targets, ignore_index=ignore_value, reduction="sum")


class TestUpsampledCrossEntropy(unittest.TestCase):
    def test_by_hand(self):
        # Constant logits (0, ln 3) stay constant when upsampled: -log softmax = ln 4 for
        # label 0 and ln(4/3) for label 1; the ignored pixel adds nothing.
        logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
        targets = torch.tensor([[[0, 0], [1, 255]]])
        for align_corners in (True, False):
            got = uce.upsampled_cross_entropy_sum(
                logits, targets, align_corners=align_corners, ignore_value=255
            )
            self.assertAlmostEqual(got.item(), 2 * math.log(4) + math.log(4 / 3), places=5)

    def test_loss_and_gradient_match_the_reference(self):
        gen = torch.Generator().manual_seed(0)
        # Odd sizes, several bands with a partial last one, the same size (no upsampling).
        cases = [((13, 19), (50, 75)), ((16, 16), (64, 64)), ((9, 7), (9, 7)), ((20, 3), (77, 5))]
        for (h, w), (out_h, out_w) in cases:
            for align_corners in (True, False):
                with self.subTest(size=(h, w, out_h, out_w), align_corners=align_corners):
                    logits = torch.randn(2, 5, h, w, generator=gen, requires_grad=True)
                    targets = torch.randint(0, 5, (2, out_h, out_w), generator=gen)
                    targets[:, :, :2] = 255
                    targets[1, -3:] = 255
                    want = reference(logits, targets, align_corners)
                    (want_grad,) = torch.autograd.grad(want, logits)
                    got = uce.upsampled_cross_entropy_sum(
                        logits, targets, align_corners=align_corners, ignore_value=255
                    )
                    (got_grad,) = torch.autograd.grad(got, logits)
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)
                    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)

    def test_gradient_scales_with_the_incoming_gradient(self):
        logits = torch.randn(1, 3, 4, 4, requires_grad=True)
        targets = torch.randint(0, 3, (1, 16, 16))
        (once,) = torch.autograd.grad(
            uce.upsampled_cross_entropy_sum(logits, targets, align_corners=True, ignore_value=9),
            logits,
        )
        (scaled,) = torch.autograd.grad(
            0.4
            * uce.upsampled_cross_entropy_sum(logits, targets, align_corners=True, ignore_value=9),
            logits,
        )
        torch.testing.assert_close(scaled, 0.4 * once)

    def test_every_pixel_ignored(self):
        logits = torch.randn(1, 3, 4, 4, requires_grad=True)
        targets = torch.full((1, 16, 16), 255)
        loss = uce.upsampled_cross_entropy_sum(
            logits, targets, align_corners=False, ignore_value=255
        )
        loss.backward()
        self.assertEqual(loss.item(), 0.0)
        self.assertEqual(logits.grad.abs().max().item(), 0.0)

    def test_without_gradient(self):
        logits = torch.randn(1, 3, 4, 4)
        targets = torch.randint(0, 3, (1, 10, 10))
        loss = uce.upsampled_cross_entropy_sum(
            logits, targets, align_corners=True, ignore_value=255
        )
        self.assertFalse(loss.requires_grad)
        torch.testing.assert_close(loss, reference(logits, targets, True))

    def test_bands_bound_the_transient_memory(self):
        # 77 output rows in bands of ROWS_PER_BAND rows, the last one partial.
        bands = uce._bands(77)
        self.assertEqual(bands[0], slice(0, uce.ROWS_PER_BAND))
        self.assertEqual(sum(b.stop - b.start for b in bands), 77)
        self.assertEqual(len(bands), math.ceil(77 / uce.ROWS_PER_BAND))


if __name__ == "__main__":
    unittest.main()

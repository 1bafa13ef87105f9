import unittest

import torch
import torch.nn.functional as F

from semask_d2.modeling.resize import resize_bilinear_channels_last


def _map(n, c, h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, c, generator=gen)
    return x.permute(0, 3, 1, 2)  # channels-last memory, as the encoder outputs its levels


class TestResizeBilinearChannelsLast(unittest.TestCase):
    def test_doubling_matches_interpolate(self):
        for n, c, h, w in [(1, 16, 8, 8), (2, 5, 3, 7), (1, 4, 1, 1), (1, 3, 1, 6)]:
            x = _map(n, c, h, w)
            with self.subTest(shape=(n, c, h, w)), torch.no_grad():
                out = resize_bilinear_channels_last(x, (2 * h, 2 * w))
                expected = F.interpolate(
                    x.double(), size=(2 * h, 2 * w), mode="bilinear", align_corners=False
                )
                self.assertTrue(out.is_contiguous(memory_format=torch.channels_last))
                self.assertEqual(out.dtype, torch.float32)
                torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)

    def test_values_by_hand(self):
        # One row 0, 4, 8: outputs sample -1/4 (clamped to 0), 1/4, 3/4, 5/4, 7/4, 9/4 (to 2).
        x = torch.tensor([0.0, 4.0, 8.0]).view(1, 1, 1, 3)
        with torch.no_grad():
            out = resize_bilinear_channels_last(x, (2, 6))
        row = [0.0, 1.0, 3.0, 5.0, 7.0, 8.0]
        self.assertEqual(out[0, 0].tolist(), [row, row])

    def test_other_sizes_layouts_and_gradients_take_interpolate(self):
        x = _map(1, 6, 5, 7, seed=1)
        cases = {
            "not 2x": (x, (9, 13), False),
            "channels-first input": (x.contiguous(), (10, 14), False),
            "gradient": (x.clone().requires_grad_(True), (10, 14), True),
        }
        for name, (inp, size, grad) in cases.items():
            with self.subTest(name), torch.set_grad_enabled(grad):
                out = resize_bilinear_channels_last(inp, size)
                expected = F.interpolate(inp, size=size, mode="bilinear", align_corners=False)
                self.assertTrue(out.is_contiguous(memory_format=torch.channels_last))
                self.assertTrue(torch.equal(out, expected))
                self.assertEqual(out.requires_grad, grad)


if __name__ == "__main__":
    unittest.main()

"""
The modulated deformable convolution of FaPN (torchvision's op called with DCNv2's channel
layout) against a direct implementation of its definition written here: per deformable group
g and kernel point k = kw i + j, offset channels 2 (g kh kw + k) = dy and + 1 = dx, mask channel
g kh kw + k, bilinear sampling at (y - pad + i + dy, x - pad + j + dx) with zeros outside.
"""

import unittest

import torch

from semask_d2.modeling.pixel_decoder.feature_align import (
    ModulatedDeformConv,
    modulated_deform_conv2d,
)


def bilinear_zeros(x, py, px):
    """
    Args:
        x: (N, C, H, W); py, px: (N, h, w) sampling positions in pixels.
    Returns:
        (N, C, h, w): bilinear samples, each of the four corners reading 0 outside the map.
    """
    n, c, height, width = x.shape
    y0, x0 = torch.floor(py), torch.floor(px)
    flat = x.flatten(2)
    out = torch.zeros(n, c, *py.shape[1:], dtype=x.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = (yy.clamp(0, height - 1) * width + xx.clamp(0, width - 1)).long()
            values = flat.gather(2, index.flatten(1)[:, None].expand(-1, c, -1))
            out = out + values.view_as(out) * (wy * wx * inside)[:, None]
    return out


def deform_conv_reference(x, offset, mask, weight, bias, padding):
    """Modulated deformable convolution, stride 1, by its definition (loops over groups and
    kernel points)."""
    n, c_in, _, _ = x.shape
    c_out, _, kh, kw = weight.shape
    points = kh * kw
    groups = mask.shape[1] // points
    per_group = c_in // groups
    out_h, out_w = offset.shape[-2:]
    base_y = (torch.arange(out_h, dtype=x.dtype) - padding)[:, None].expand(out_h, out_w)
    base_x = (torch.arange(out_w, dtype=x.dtype) - padding)[None, :].expand(out_h, out_w)
    out = torch.zeros(n, c_out, out_h, out_w, dtype=x.dtype)
    for g in range(groups):
        channels = slice(g * per_group, (g + 1) * per_group)
        for i in range(kh):
            for j in range(kw):
                k = g * points + i * kw + j
                py = base_y + i + offset[:, 2 * k]
                px = base_x + j + offset[:, 2 * k + 1]
                sampled = bilinear_zeros(x[:, channels], py, px) * mask[:, k, None]
                out = out + torch.einsum("oc,nchw->nohw", weight[:, channels, i, j], sampled)
    return out + bias[None, :, None, None]


def random_case(groups, seed, offset_range=4.0, dtype=torch.float64):
    """Inputs of a 3x3 deformable conv: 16 -> 4 channels on 5x7 maps, offsets up to
    `offset_range` pixels (many samples fall outside the map)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 7, generator=g, dtype=dtype)
    offset = (torch.rand(2, 2 * groups * 9, 5, 7, generator=g, dtype=dtype) * 2 - 1) * offset_range
    mask = torch.rand(2, groups * 9, 5, 7, generator=g, dtype=dtype)
    weight = torch.randn(4, 16, 3, 3, generator=g, dtype=dtype)
    bias = torch.randn(4, generator=g, dtype=dtype)
    return [x, offset, mask, weight, bias]


class TestModulatedDeformConv2d(unittest.TestCase):
    def _centre_only(self, dy, dx):
        """[[1, 2], [3, 4]] with only the centre tap of a 3x3 kernel, mask 1, one offset."""
        x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
        weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        weight[0, 0, 1, 1] = 1
        offset = torch.zeros(1, 18, 2, 2, dtype=torch.float64)
        offset[:, 8] = dy  # kernel point k = 4 (centre): channel 2k = dy, 2k + 1 = dx
        offset[:, 9] = dx
        mask = torch.ones(1, 9, 2, 2, dtype=torch.float64)
        return modulated_deform_conv2d(x, offset, mask, weight, None, padding=1)[0, 0]

    def test_hand_computed_samples(self):
        out = self._centre_only(0.5, 0.25)
        # (0, 0) reads (0.5, 0.25): 0.5 (0.75 * 1 + 0.25 * 2) + 0.5 (0.75 * 3 + 0.25 * 4).
        self.assertAlmostEqual(out[0, 0].item(), 2.25, places=12)
        # (1, 1) reads (1.5, 1.25): only the corner (1, 1) is inside, weight 0.5 * 0.75.
        self.assertAlmostEqual(out[1, 1].item(), 1.5, places=12)
        # (0, 1) reads (0.5, 1.25): corners (0, 1) and (1, 1), weights 0.5 * 0.75 each.
        self.assertAlmostEqual(out[0, 1].item(), 0.375 * 2 + 0.375 * 4, places=12)
        # dy moves along rows, dx along columns: (0, 0) reads 3 with dy = 1, 2 with dx = 1.
        self.assertAlmostEqual(self._centre_only(1.0, 0.0)[0, 0].item(), 3.0, places=12)
        self.assertAlmostEqual(self._centre_only(0.0, 1.0)[0, 0].item(), 2.0, places=12)
        # Entirely outside: 0.
        self.assertEqual(self._centre_only(-2.5, 0.0)[0, 0].item(), 0.0)

    def test_matches_definition_for_1_and_8_groups(self):
        for groups in (1, 8):
            with self.subTest(groups=groups):
                args = random_case(groups, seed=groups)
                ours = modulated_deform_conv2d(*args, padding=1)
                expected = deform_conv_reference(*args, padding=1)
                self.assertEqual(ours.dtype, torch.float64)
                torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)

    def test_offsets_of_several_pixels_leave_the_map(self):
        # The case above samples outside the map in many places: check it does.
        _, offset, _, _, _ = random_case(8, seed=8)
        rows = torch.arange(5, dtype=torch.float64)[:, None] - 1
        outside = (rows + offset[:, 0::2] <= -1) | (rows + 2 + offset[:, 0::2] >= 5)
        self.assertGreater(outside.double().mean().item(), 0.2)

    def test_gradients_match_definition(self):
        for groups in (1, 8):
            with self.subTest(groups=groups):
                grads = []
                for fn in (modulated_deform_conv2d, deform_conv_reference):
                    args = [t.requires_grad_() for t in random_case(groups, seed=10 + groups)]
                    out = fn(*args, padding=1)
                    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
                    (out.flatten() * weights).sum().backward()
                    grads.append([t.grad for t in args])
                for name, ours, expected in zip(
                    ("input", "offset", "mask", "weight", "bias"), *grads
                ):
                    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10, msg=name)

    def test_float32_inside_bf16_autocast(self):
        args = random_case(8, seed=3, dtype=torch.float32)
        low = [t.bfloat16() for t in args]
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = modulated_deform_conv2d(*low, padding=1)
        self.assertEqual(out.dtype, torch.float32)
        expected = deform_conv_reference(*[t.double() for t in low], padding=1)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)


class TestModulatedDeformConvModule(unittest.TestCase):
    def test_zero_init_is_a_half_weighted_convolution(self):
        torch.manual_seed(0)
        conv = ModulatedDeformConv(16, 8).double()
        self.assertEqual(list(conv.conv_offset_mask.weight.shape), [216, 16, 3, 3])
        self.assertEqual(conv.conv_offset_mask.weight.abs().sum().item(), 0)
        self.assertEqual(conv.conv_offset_mask.bias.abs().sum().item(), 0)
        self.assertEqual(conv.bias.abs().sum().item(), 0)
        self.assertLessEqual(conv.weight.abs().max().item(), 1 / 12)  # 1 / sqrt(16 * 9)
        x, guide = torch.randn(2, 16, 6, 5).double(), torch.randn(2, 16, 6, 5).double()
        # Offsets 0 and mask sigmoid(0) = 0.5.
        expected = torch.nn.functional.conv2d(x, 0.5 * conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv(x, guide), expected, rtol=0, atol=1e-12)

    def test_offsets_are_the_first_144_channels_and_the_mask_the_sigmoid_of_the_rest(self):
        torch.manual_seed(0)
        conv = ModulatedDeformConv(16, 4).double()
        with torch.no_grad():
            conv.conv_offset_mask.weight.normal_(std=0.2)
            conv.conv_offset_mask.bias.normal_(std=1.0)
            conv.bias.normal_()
        x, guide = torch.randn(2, 16, 5, 7).double(), torch.randn(2, 16, 5, 7).double()
        predicted = conv.conv_offset_mask(guide)
        self.assertGreater(predicted[:, :144].abs().max().item(), 2.0)  # several pixels
        expected = deform_conv_reference(
            x, predicted[:, :144], torch.sigmoid(predicted[:, 144:]), conv.weight, conv.bias, 1
        )
        torch.testing.assert_close(conv(x, guide), expected, rtol=0, atol=1e-12)

    def test_groups_must_divide_the_channels(self):
        with self.assertRaisesRegex(ValueError, "12 input channels are not divisible by 8"):
            ModulatedDeformConv(12, 12)


if __name__ == "__main__":
    unittest.main()

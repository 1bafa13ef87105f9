"""Multi-scale deformable attention: the op against its definition, and the module's init."""

import math
import unittest

import torch

from semask_d2.modeling.pixel_decoder import MSDeformAttn
from semask_d2.modeling.pixel_decoder.ms_deform_attn import ms_deform_attn

SHAPES = [(3, 5), (4, 2), (2, 3)]  # (H, W) per level: non-square, different sizes


def loop_ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights):
    """The definition, one sample at a time: bilinear interpolation at loc * size - 0.5, with
    zero outside the map, weighted and summed over levels and points."""
    n, _, n_heads, head_dim = value.shape
    _, n_queries, _, _, n_points, _ = sampling_locations.shape
    rows = []
    for b in range(n):
        for q in range(n_queries):
            heads = []
            for m in range(n_heads):
                acc = value.new_zeros(head_dim)
                start = 0
                for lvl, (h, w) in enumerate(spatial_shapes):
                    for p in range(n_points):
                        x = sampling_locations[b, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < w and 0 <= yi < h:
                                bilinear = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                                weight = bilinear * attention_weights[b, q, m, lvl, p]
                                acc = acc + weight * value[b, start + yi * w + xi, m]
                    start += h * w
                heads.append(acc)
            rows.append(torch.cat(heads))
    return torch.stack(rows).view(n, n_queries, n_heads * head_dim)


def random_inputs(seed, n=2, n_queries=5, n_heads=2, head_dim=3, n_points=2):
    g = torch.Generator().manual_seed(seed)
    num_values = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, num_values, n_heads, head_dim, generator=g, dtype=torch.float64)
    loc_shape = (n, n_queries, n_heads, len(SHAPES), n_points, 2)
    # Some locations fall outside [0, 1]: those samples are partly or wholly zero.
    locations = torch.rand(loc_shape, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(loc_shape[:-1], generator=g, dtype=torch.float64)
    return value, locations, weights


class TestMSDeformAttnOp(unittest.TestCase):
    def test_forward_matches_definition(self):
        value, locations, weights = random_inputs(0)
        self.assertTrue(((locations < 0) | (locations > 1)).any())
        out = ms_deform_attn(value, SHAPES, locations, weights)
        expected = loop_ms_deform_attn(value, SHAPES, locations, weights)
        self.assertEqual(out.shape, (2, 5, 6))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    def test_gradients_match_definition(self):
        inputs = [t.requires_grad_() for t in random_inputs(1)]
        upstream = torch.randn(2, 5, 6, dtype=torch.float64)
        grads = []
        for fn in (ms_deform_attn, loop_ms_deform_attn):
            out = fn(inputs[0], SHAPES, inputs[1], inputs[2])
            grads.append(torch.autograd.grad((out * upstream).sum(), inputs))
        for name, ours, expected in zip(("value", "locations", "weights"), *grads):
            with self.subTest(name):
                self.assertGreater(expected.abs().sum().item(), 0)
                torch.testing.assert_close(ours, expected, rtol=0, atol=1e-8)

    def test_gradient_of_each_input_alone(self):
        # The hand-written backward pass computes only the gradients that are asked for.
        upstream = torch.randn(2, 5, 6, dtype=torch.float64)
        for index, name in enumerate(("value", "locations", "weights")):
            inputs = list(random_inputs(1))
            inputs[index].requires_grad_()
            grads = []
            for fn in (ms_deform_attn, loop_ms_deform_attn):
                out = fn(inputs[0], SHAPES, inputs[1], inputs[2])
                grads.append(torch.autograd.grad((out * upstream).sum(), inputs[index])[0])
            with self.subTest(name):
                torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-8)

    def test_gradcheck(self):
        value, locations, weights = random_inputs(2, n=1, n_queries=2, head_dim=2)
        inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
        self.assertTrue(
            torch.autograd.gradcheck(lambda v, s, a: ms_deform_attn(v, SHAPES, s, a), inputs)
        )


class TestMSDeformAttnModule(unittest.TestCase):
    def test_init(self):
        n_heads, n_levels, n_points = 8, 3, 4
        attn = MSDeformAttn(d_model=32, n_levels=n_levels, n_heads=n_heads, n_points=n_points)
        self.assertEqual(attn.sampling_offsets.weight.abs().sum().item(), 0)
        bias = attn.sampling_offsets.bias.view(n_heads, n_levels, n_points, 2)
        for h in range(n_heads):
            theta = 2 * math.pi * h / n_heads
            direction = torch.tensor([math.cos(theta), math.sin(theta)])
            direction = direction / direction.abs().max()
            for lvl in range(n_levels):
                for p in range(n_points):
                    torch.testing.assert_close(bias[h, lvl, p], direction * (p + 1))
        # Head 1 of 8 (45 degrees) is normalised to the diagonal (1, 1), not the unit circle.
        torch.testing.assert_close(bias[1, 0, 0], torch.tensor([1.0, 1.0]))
        for t in (attn.attention_weights.weight, attn.attention_weights.bias):
            self.assertEqual(t.abs().sum().item(), 0)
        for proj in (attn.value_proj, attn.output_proj):
            self.assertEqual(proj.bias.abs().sum().item(), 0)
            bound = math.sqrt(6 / (32 + 32))  # xavier_uniform
            self.assertLessEqual(proj.weight.abs().max().item(), bound)

    def test_forward_is_projected_op(self):
        # Both paths of the module: grid_sample (gradients, GPUs, traces) and the CPU gather of
        # inference; offsets of several pixels put many samples partly or wholly outside.
        torch.manual_seed(0)
        attn = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2).double()
        torch.nn.init.normal_(attn.sampling_offsets.weight)
        torch.nn.init.normal_(attn.attention_weights.weight)
        num_values = sum(h * w for h, w in SHAPES)
        query = torch.randn(2, 4, 8, dtype=torch.float64)
        value = torch.randn(2, num_values, 8, dtype=torch.float64)
        for ref in (
            torch.rand(2, 4, 3, 2, dtype=torch.float64),
            torch.rand(1, 4, 1, 2, dtype=torch.float64),  # shared by images and levels
        ):
            with torch.no_grad():
                offsets = attn.sampling_offsets(query).view(2, 4, 2, 3, 2, 2)
                sizes = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
                locations = ref[:, :, None, :, None, :] + offsets / sizes[:, None, :]
                weights = attn.attention_weights(query).view(2, 4, 2, 6).softmax(-1)
                weights = weights.view(2, 4, 2, 3, 2)
                projected = attn.value_proj(value).view(2, num_values, 2, 4)
                expected = loop_ms_deform_attn(projected, SHAPES, locations, weights)
                expected = attn.output_proj(expected)
            self.assertTrue(((locations < 0) | (locations > 1)).any())
            for gather in (False, True):
                with self.subTest(gather=gather, shared=ref.shape[0] == 1):
                    with torch.set_grad_enabled(not gather):
                        self.assertEqual(attn._gathers(query, value), gather)
                        out = attn(query, ref, value, SHAPES)
                    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    def test_rejects_indivisible_heads(self):
        with self.assertRaises(ValueError):
            MSDeformAttn(d_model=30, n_heads=8)


if __name__ == "__main__":
    unittest.main()

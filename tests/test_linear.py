import unittest

import torch
import torch.nn.functional as F
from torch import nn

from semask_d2.modeling.linear import Linear, linear, uses_onednn

ONEDNN = torch.backends.mkldnn.is_available()


def _inputs(seed=0, shape=(3, 37, 24), out_features=40):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    weight = torch.randn(out_features, shape[-1], generator=gen) / shape[-1] ** 0.5
    bias = torch.randn(out_features, generator=gen)
    return x, weight, bias


class TestLinear(unittest.TestCase):
    def test_matches_float64_product(self):
        x, weight, bias = _inputs()
        expected = F.linear(x.double(), weight.double(), bias.double())
        cases = {
            "3d": (x, bias, False),
            "2d": (x[0], bias, False),
            "no bias": (x, None, False),
            "relu": (x, bias, True),
            "non-contiguous": (x.transpose(0, 1), bias, False),
        }
        for name, (inp, b, relu) in cases.items():
            with self.subTest(name), torch.no_grad():
                self.assertEqual(uses_onednn(inp, weight, b), ONEDNN)
                out = linear(inp, weight, b, relu=relu)
                ref = F.linear(inp.double(), weight.double(), None if b is None else b.double())
                if relu:
                    ref = ref.relu()
                self.assertEqual(out.shape, ref.shape)
                self.assertEqual(out.dtype, torch.float32)
                torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
        self.assertGreater(expected.abs().max().item(), 1.0)

    def test_relu_clears_negatives_only(self):
        x = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
        weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        with torch.no_grad():
            out = linear(x, weight, torch.tensor([0.0, 0.0, -1.0]), relu=True)
        self.assertEqual(out.tolist(), [[1.0, 0.0, 0.0], [0.5, 0.25, 0.0]])

    def test_plain_f_linear_where_it_must(self):
        x, weight, bias = _inputs(1)
        weight.requires_grad_(True)
        cases = {
            "autograd": (x, weight, bias),
            "float64": (x.double(), weight.detach().double(), bias.double()),
        }
        for name, (inp, w, b) in cases.items():
            with self.subTest(name):
                self.assertFalse(uses_onednn(inp, w, b))
                self.assertTrue(torch.equal(linear(inp, w, b), F.linear(inp, w, b)))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            self.assertFalse(uses_onednn(x, weight, bias))
            self.assertEqual(linear(x, weight, bias).dtype, torch.bfloat16)

    def test_traced_graph_holds_aten_linear(self):
        layer = Linear(24, 40).eval()
        x = _inputs()[0]
        with torch.no_grad():
            traced = torch.jit.trace(layer, (x,))
        kinds = {node.kind() for node in traced.graph.nodes()}
        self.assertIn("aten::linear", kinds)
        self.assertFalse(any(kind.startswith("mkldnn::") for kind in kinds))

    def test_layer_is_an_nn_linear_with_gradients(self):
        torch.manual_seed(0)
        layer, plain = Linear(24, 40), nn.Linear(24, 40)
        plain.load_state_dict(layer.state_dict())
        self.assertIsInstance(layer, nn.Linear)
        self.assertEqual(list(layer.state_dict()), ["weight", "bias"])
        x = _inputs()[0]
        layer(x).square().sum().backward()
        plain(x).square().sum().backward()
        self.assertTrue(torch.equal(layer.weight.grad, plain.weight.grad))
        with torch.no_grad():
            torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=1e-5)


if __name__ == "__main__":
    unittest.main()

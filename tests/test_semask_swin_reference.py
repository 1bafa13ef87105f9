"""
Checks the SeMask Swin backbone against the slow float64 reference in ``semask_reference.py``.

``TestReferenceSanity`` first checks the reference itself on properties that can be derived by
hand; ``TestSeMaskSwinAgainstReference`` then compares every backbone output (features and
prior maps) with it at atol 1e-6, on 64x64 and 45x71 inputs, windowed and global semantic
stages, ``sem_window_size != window_size``, chained semantic modules and the plain-Swin case.
"""

import math
import os
import sys
import unittest

import torch

from semask_d2.modeling.backbone.semask_swin import D2SeMaskSwinTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import semask_reference as ref  # noqa: E402

F64 = torch.float64
ATOL = 1e-6


def _random_block_sd(c, heads, ws, gen, prefix=""):
    """Random weights of one Swin block (official key names)."""

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    return {
        prefix + "norm1.weight": 1 + 0.2 * r(c),
        prefix + "norm1.bias": 0.2 * r(c),
        prefix + "norm2.weight": 1 + 0.2 * r(c),
        prefix + "norm2.bias": 0.2 * r(c),
        prefix + "attn.relative_position_bias_table": 0.5 * r((2 * ws - 1) ** 2, heads),
        prefix + "attn.qkv.weight": r(3 * c, c) / math.sqrt(c),
        prefix + "attn.qkv.bias": 0.2 * r(3 * c),
        prefix + "attn.proj.weight": r(c, c) / math.sqrt(c),
        prefix + "attn.proj.bias": 0.2 * r(c),
        prefix + "mlp.fc1.weight": r(4 * c, c) / math.sqrt(c),
        prefix + "mlp.fc1.bias": 0.2 * r(4 * c),
        prefix + "mlp.fc2.weight": r(c, 4 * c) / math.sqrt(4 * c),
        prefix + "mlp.fc2.bias": 0.2 * r(c),
    }


def _random_sem_sd(c, k, num_inj, gen, prefix=""):
    """Random weights of one semantic layer (official key names), gamma != 0."""

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    sd = {prefix + "norm1.weight": 1 + 0.2 * r(c), prefix + "norm1.bias": 0.2 * r(c)}
    for n in range(num_inj):
        p = f"{prefix}class_injection.{n}."
        for name, out_dim in (("mlp_cls_q", k), ("mlp_cls_k", k), ("mlp_v", c), ("mlp_res", c)):
            sd[p + name + ".weight"] = r(out_dim, c) / math.sqrt(c)
            sd[p + name + ".bias"] = 0.2 * r(out_dim)
        sd[p + "gamma"] = 0.5 + r(1).abs()
    return sd


def _global_mha(tokens, sd, p, heads, bias_fn, mask=None):
    """Vectorised multi-head attention over all tokens; bias_fn(h) gives the (N, N) bias."""
    n, c = tokens.shape
    hd = c // heads
    qkv = tokens @ sd[p + "attn.qkv.weight"].t() + sd[p + "attn.qkv.bias"]
    qkv = qkv.view(n, 3, heads, hd).permute(1, 2, 0, 3)  # (3, heads, N, hd)
    q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
    logits = q @ k.transpose(-1, -2) + torch.stack([bias_fn(h) for h in range(heads)])
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    out = (logits.softmax(-1) @ v).permute(1, 0, 2).reshape(n, c)
    return out @ sd[p + "attn.proj.weight"].t() + sd[p + "attn.proj.bias"]


def _block_by_torch(x, sd, p, attn_fn):
    """Swin block written with torch.nn.functional, with a pluggable attention on (N, C)."""
    h, w, c = x.shape
    y = torch.nn.functional.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
    x = x + attn_fn(y.reshape(h * w, c)).reshape(h, w, c)
    y = torch.nn.functional.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    y = torch.nn.functional.gelu(y @ sd[p + "mlp.fc1.weight"].t() + sd[p + "mlp.fc1.bias"])
    return x + y @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]


def _bias_fn(sd, p, ws):
    """Relative position bias built with meshgrid arithmetic (not the reference's loops)."""
    hh, ww = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    hh, ww = hh.flatten(), ww.flatten()
    dh = hh[:, None] - hh[None, :] + ws - 1
    dw = ww[:, None] - ww[None, :] + ws - 1
    table = sd[p + "attn.relative_position_bias_table"]
    return lambda h: table[dh * (2 * ws - 1) + dw, h]


class TestReferenceSanity(unittest.TestCase):
    """Properties of the reference that can be derived by hand."""

    def setUp(self):
        self.gen = torch.Generator().manual_seed(0)

    def test_window_covering_map_is_global_attention(self):
        # One window of exactly the map size, no shift, no padding: plain global MHA + bias.
        ws, c, heads = 4, 8, 2
        sd = _random_block_sd(c, heads, ws, self.gen)
        x = torch.randn(ws, ws, c, generator=self.gen, dtype=F64)
        got = ref._swin_block(x, sd, "", heads, ws, 0, None, 1e-5)
        bias = _bias_fn(sd, "", ws)
        want = _block_by_torch(x, sd, "", lambda t: _global_mha(t, sd, "", heads, bias))
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)

    def test_shifted_single_window_is_block_masked_attention(self):
        # Map = one window, shift s: the cyclic shift moves original rows/cols [0, s) behind
        # [s, ws). The -100 mask then restricts attention to tokens of the same (row band, col
        # band) in original coordinates, and no pair inside a band wraps, so the relative
        # position bias is the unshifted one. exp(-100) is below float64 resolution here.
        ws, c, heads = 5, 8, 2
        s = ws // 2
        sd = _random_block_sd(c, heads, ws, self.gen)
        x = torch.randn(ws, ws, c, generator=self.gen, dtype=F64)
        got = ref._swin_block(x, sd, "", heads, ws, s, None, 1e-5)
        band = (torch.arange(ws) >= s).long()
        reg = (band[:, None] * 2 + band[None, :]).flatten()
        mask = reg[:, None] != reg[None, :]
        bias = _bias_fn(sd, "", ws)
        want = _block_by_torch(x, sd, "", lambda t: _global_mha(t, sd, "", heads, bias, mask))
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        # and the mask matters
        unmasked = _block_by_torch(x, sd, "", lambda t: _global_mha(t, sd, "", heads, bias))
        self.assertGreater((got - unmasked).abs().max().item(), 1e-3)

    def test_semantic_layer_with_zero_gamma_is_layer_norm(self):
        c, k = 8, 3
        sd = _random_sem_sd(c, k, 2, self.gen)
        for n in range(2):
            sd[f"class_injection.{n}.gamma"] = torch.zeros(1, dtype=F64)
        x = torch.randn(5, 7, c, generator=self.gen, dtype=F64)
        xn = torch.nn.functional.layer_norm(x, (c,), sd["norm1.weight"], sd["norm1.bias"])
        q = (
            xn @ sd["class_injection.1.mlp_cls_q.weight"].t()
            + sd["class_injection.1.mlp_cls_q.bias"]
        )
        for windowed in (True, False):
            out, prior = ref._semantic_layer(x, sd, "", 2, windowed, 3, 1e-5)
            torch.testing.assert_close(out, xn, atol=1e-12, rtol=0)
            torch.testing.assert_close(prior, q, atol=1e-12, rtol=0)

    def test_semantic_layer_global_formula(self):
        # out = gamma * mlp_res(softmax(Q K^T) V) + LN(x), one sequence, no scaling.
        c, k = 8, 3
        sd = _random_sem_sd(c, k, 1, self.gen)
        x = torch.randn(4, 6, c, generator=self.gen, dtype=F64)
        xn = torch.nn.functional.layer_norm(x, (c,), sd["norm1.weight"], sd["norm1.bias"])
        t = xn.reshape(-1, c)

        def lin(n, z):
            return z @ sd[f"class_injection.0.{n}.weight"].t() + sd[f"class_injection.0.{n}.bias"]

        q, kk, v = lin("mlp_cls_q", t), lin("mlp_cls_k", t), lin("mlp_v", t)
        want = sd["class_injection.0.gamma"] * lin("mlp_res", (q @ kk.t()).softmax(-1) @ v) + t
        out, prior = ref._semantic_layer(x, sd, "", 1, False, 3, 1e-5)
        torch.testing.assert_close(out, want.reshape(4, 6, c), atol=1e-12, rtol=0)
        torch.testing.assert_close(prior, q.reshape(4, 6, k), atol=1e-12, rtol=0)
        # A window that covers the whole map exactly is the global layer.
        out_w, prior_w = ref._semantic_layer(x[:4, :4], sd, "", 1, True, 4, 1e-5)
        out_g, prior_g = ref._semantic_layer(x[:4, :4], sd, "", 1, False, 4, 1e-5)
        torch.testing.assert_close(out_w, out_g, atol=1e-12, rtol=0)
        torch.testing.assert_close(prior_w, prior_g, atol=1e-12, rtol=0)

    def test_patch_merging_order(self):
        # Channel group g of the concatenation holds offset (0,0), (1,0), (0,1), (1,1).
        x = torch.arange(3 * 3, dtype=F64).reshape(3, 3, 1)  # odd size: zero padded to 4x4
        sd = {
            "norm.weight": torch.ones(4, dtype=F64),
            "norm.bias": torch.zeros(4, dtype=F64),
            "reduction.weight": torch.eye(4, dtype=F64),
        }
        got = ref._patch_merging(x, sd, "", 0.0)
        raw = torch.tensor([[[0, 3, 1, 4], [2, 5, 0, 0]], [[6, 0, 7, 0], [8, 0, 0, 0]]], dtype=F64)
        want = torch.nn.functional.layer_norm(raw, (4,), eps=0.0)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def _randomize_(model, seed):
    """
    Overwrite every parameter with O(1)-scale random values so that each one matters:
    LayerNorm weights around 1, biases and position-bias tables visibly non-zero, and the whole
    semantic branch live (``gamma`` in [0.5, 1.5], non-zero ``mlp_res``).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=F64)
            if name.endswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=F64))
            elif name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * r)
            elif p.dim() >= 2:  # Linear / conv weights: unit-variance outputs
                p.copy_(r / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            else:  # biases
                p.copy_(0.2 * r)


class TestSeMaskSwinAgainstReference(unittest.TestCase):
    """The fast backbone equals the slow float64 reference at atol 1e-6."""

    NUM_HEADS = [1, 2, 2, 4]
    K = 5

    def setUp(self):
        # Tiny float64 matmuls with 2 OpenMP threads on a busy 2-core machine were observed
        # to take ~10 ms each (instead of ~10 us); one thread keeps the file within seconds.
        self._num_threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def tearDown(self):
        torch.set_num_threads(self._num_threads)

    def _check(
        self, size, batch=1, *, window_size, sem_window_size, sem_windowed, num_sem_blocks, seed=0
    ):
        torch.manual_seed(seed)
        model = D2SeMaskSwinTransformer(
            embed_dim=16,
            depths=[2, 2, 2, 2],
            num_heads=self.NUM_HEADS,
            window_size=window_size,
            num_classes=self.K,
            sem_window_size=sem_window_size,
            sem_windowed=sem_windowed,
            drop_path_rate=0.0,
            out_features=["res2", "res3", "res4", "res5"],
            num_sem_blocks=num_sem_blocks,
            sem_init="mmseg",
        )
        model = model.double().eval()
        _randomize_(model, seed)
        for pname, p in model.named_parameters():
            if "semantic_layer" in pname:  # the branch under test is live everywhere
                self.assertTrue(bool((p != 0).all()), pname)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, 3, *size, generator=gen, dtype=F64)
        with torch.no_grad():
            got = model(x)
            want = ref.reference_forward(
                model.state_dict(),
                x,
                num_heads=self.NUM_HEADS,
                window_size=window_size,
                sem_window_size=sem_window_size,
                sem_windowed=sem_windowed,
            )
        self.assertEqual(sorted(got), sorted(want))
        expected = [f"res{i}" for i in range(2, 6)]
        if num_sem_blocks > 0:
            expected += [f"res{i}_prior" for i in range(2, 6)]
        self.assertEqual(sorted(want), sorted(expected))
        for name in expected:
            with self.subTest(output=name):
                self.assertEqual(got[name].shape, want[name].shape)
                torch.testing.assert_close(got[name], want[name], atol=ATOL, rtol=0)
        return got

    def test_64x64_windowed_then_global(self):
        # Maps 16/8/4/2 with window 3: every stage pads (18/9/6/3); shift 1.
        self._check(
            (64, 64),
            batch=2,
            window_size=3,
            sem_window_size=3,
            sem_windowed=[True, True, True, False],
            num_sem_blocks=1,
        )

    def test_odd_size_mixed_stages(self):
        # 45x71 -> maps 12x18, 6x9, 3x5, 2x3. Window 5 (shift 2) pads every stage; semantic
        # window 4 pads stages 0 and 2; stages 1 and 3 are global.
        self._check(
            (45, 71),
            window_size=5,
            sem_window_size=4,
            sem_windowed=[True, False, True, False],
            num_sem_blocks=1,
        )

    def test_odd_size_chained_semantic_modules(self):
        # Two chained SemanticAttention modules per stage, all windowed, semantic window 2
        # (pads 6x9 -> 6x10, 3x5 -> 4x6, 2x3 -> 2x4) while the Swin window is 3.
        self._check(
            (45, 71),
            window_size=3,
            sem_window_size=2,
            sem_windowed=[True, True, True, True],
            num_sem_blocks=2,
        )

    def test_plain_swin(self):
        got = self._check(
            (45, 71),
            window_size=3,
            sem_window_size=3,
            sem_windowed=[True, True, True, False],
            num_sem_blocks=0,
        )
        self.assertFalse(any(k.endswith("_prior") for k in got))


if __name__ == "__main__":
    unittest.main()

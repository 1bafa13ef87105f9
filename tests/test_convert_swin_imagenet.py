"""
Tests for ``tools/convert_swin_imagenet.py`` on synthetic Swin ImageNet checkpoints.

A tiny Swin (embed 16, depths 2-2-2-2, heads 1-2-2-4, window 3) gets a distinct random tensor per
key, named as in our backbone; the test then writes it in the official layout (merging at the
end of stage i, ``attn_mask`` buffers, ``head.*``) and in the timm layout (merging under stage
i + 1, ``head.fc.*``, no ``relative_position_index``) and checks that every tensor comes back
under its own name, bit for bit, and that Detectron2 loads the result without heuristics.
"""

import contextlib
import io
import os
import pickle
import re
import tempfile
import unittest

import numpy as np
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from semask_d2.modeling.backbone.semask_swin import D2SeMaskSwinTransformer

from script_loader import load_script

tool = load_script("tools/convert_swin_imagenet.py")

EMBED, DEPTHS, HEADS, WINDOW = 16, [2, 2, 2, 2], [1, 2, 2, 4], 3
ARCH = dict(
    embed_dim=EMBED,
    depths=DEPTHS,
    num_heads=HEADS,
    window_size=WINDOW,
    patch_size=4,
    mlp_ratio=4.0,
    qkv_bias=True,
    patch_norm=True,
)
_SEMANTIC_PARAMS = ["norm1.weight", "norm1.bias", "class_injection.0.gamma"] + [
    f"class_injection.0.{m}.{p}"
    for m in ("mlp_cls_q", "mlp_cls_k", "mlp_v", "mlp_res")
    for p in ("weight", "bias")
]
EXPECTED_MISSING = sorted(
    [f"backbone.layers.{i}.semantic_layer.{p}" for i in range(4) for p in _SEMANTIC_PARAMS]
    + [f"backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
)


def reference_index(w):
    """The Swin relative position index by its definition, token p = (p // w, p % w)."""
    index = torch.empty(w * w, w * w, dtype=torch.long)
    for p in range(w * w):
        for q in range(w * w):
            (hp, wp), (hq, wq) = divmod(p, w), divmod(q, w)
            index[p, q] = (hp - hq + w - 1) * (2 * w - 1) + (wp - wq + w - 1)
    return index


def swin_weights(seed=0):
    """Distinct random tensors, under our ``backbone.*`` names, for everything Swin provides."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}

    def add(name, *shape):
        weights["backbone." + name] = torch.randn(*shape, generator=gen)

    add("patch_embed.proj.weight", EMBED, 3, 4, 4)
    add("patch_embed.proj.bias", EMBED)
    add("patch_embed.norm.weight", EMBED)
    add("patch_embed.norm.bias", EMBED)
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        c = EMBED * 2**i
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}."
            for norm in ("norm1", "norm2"):
                add(block + norm + ".weight", c)
                add(block + norm + ".bias", c)
            add(block + "attn.relative_position_bias_table", (2 * WINDOW - 1) ** 2, heads)
            add(block + "attn.qkv.weight", 3 * c, c)
            add(block + "attn.qkv.bias", 3 * c)
            add(block + "attn.proj.weight", c, c)
            add(block + "attn.proj.bias", c)
            add(block + "mlp.fc1.weight", 4 * c, c)
            add(block + "mlp.fc1.bias", 4 * c)
            add(block + "mlp.fc2.weight", c, 4 * c)
            add(block + "mlp.fc2.bias", c)
            weights[f"backbone.{block}attn.relative_position_index"] = reference_index(WINDOW)
        if i < len(DEPTHS) - 1:
            add(f"layers.{i}.downsample.reduction.weight", 2 * c, 4 * c)
            add(f"layers.{i}.downsample.norm.weight", 4 * c)
            add(f"layers.{i}.downsample.norm.bias", 4 * c)
    return weights


def _classifier(head_prefix):
    c = EMBED * 2 ** (len(DEPTHS) - 1)
    return {
        "norm.weight": torch.rand(c),
        "norm.bias": torch.rand(c),
        head_prefix + "weight": torch.rand(10, c),
        head_prefix + "bias": torch.rand(10),
    }


def official_state_dict(weights):
    """Official Swin layout: our names without ``backbone.``, plus attn_mask, norm, head."""
    sd = {k[len("backbone.") :]: v for k, v in weights.items()}
    for i, depth in enumerate(DEPTHS[:-1]):  # shifted blocks; the last stage fits one window
        for j in range(1, depth, 2):
            sd[f"layers.{i}.blocks.{j}.attn_mask"] = torch.rand(4, WINDOW**2, WINDOW**2)
    sd.update(_classifier("head."))
    return sd


def timm_state_dict(weights):
    """timm layout: merging of stage i under stage i + 1, head.fc, no relative_position_index."""
    sd = {}
    for key, value in weights.items():
        key = key[len("backbone.") :]
        m = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key)
        if m:
            key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        if not key.endswith("relative_position_index"):
            sd[key] = value
    sd.update(_classifier("head.fc."))
    return sd


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool.main(argv)
    return code, out.getvalue(), err.getvalue()


class TestReference(unittest.TestCase):
    def test_reference_index(self):
        index = reference_index(3)
        self.assertEqual(index[0, 0].item(), 12)  # zero offset: centre of the 5x5 table
        self.assertEqual(index[0, 8].item(), 0)  # (dh, dw) = (-2, -2)
        self.assertEqual(index[8, 0].item(), 24)  # (+2, +2)
        self.assertEqual(index[1, 3].item(), 1 * 5 + 3)  # (0,1) vs (1,0): (dh, dw) = (-1, +1)


class TestConvertStateDict(unittest.TestCase):
    def setUp(self):
        self.weights = swin_weights()

    def test_detect_layout(self):
        self.assertEqual(tool.detect_layout(official_state_dict(self.weights)), "official")
        self.assertEqual(tool.detect_layout(timm_state_dict(self.weights)), "timm")
        with self.assertRaisesRegex(tool.ConversionError, "not an official or timm Swin"):
            tool.detect_layout(self.weights)  # already converted: all keys under backbone.
        mixed = dict(official_state_dict(self.weights), **{"head.fc.weight": torch.zeros(1)})
        with self.assertRaisesRegex(tool.ConversionError, r"head keys \['head.bias', 'head.fc"):
            tool.detect_layout(mixed)

    def _check(self, state_dict, layout):
        new_sd, info = tool.convert_state_dict(state_dict)
        self.assertEqual(info["layout"], layout)
        self.assertEqual(info["architecture"], ARCH)
        self.assertEqual(sorted(new_sd), sorted(self.weights))
        for key, value in self.weights.items():
            self.assertEqual(new_sd[key].dtype, value.dtype, key)
            self.assertTrue(torch.equal(new_sd[key], value), key)
        self.assertEqual(info["missing"], EXPECTED_MISSING)
        return new_sd, info

    def test_official(self):
        sd = official_state_dict(self.weights)
        new_sd, info = self._check(sd, "official")
        dropped = [k for k in sd if k.endswith("attn_mask") or k.split(".")[0] in ("norm", "head")]
        self.assertEqual(len(dropped), 3 + 4)
        self.assertEqual(info["dropped"], sorted(dropped))
        self.assertEqual(info["computed"], [])
        merge = "layers.2.downsample.norm.bias"
        self.assertTrue(torch.equal(new_sd["backbone." + merge], sd[merge]))

    def test_timm(self):
        sd = timm_state_dict(self.weights)
        new_sd, info = self._check(sd, "timm")
        dropped = ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
        self.assertEqual(info["dropped"], dropped)
        for i in range(3):  # stored one stage later in timm
            for p in ("reduction.weight", "norm.weight", "norm.bias"):
                src = sd[f"layers.{i + 1}.downsample.{p}"]
                self.assertTrue(torch.equal(new_sd[f"backbone.layers.{i}.downsample.{p}"], src))
        index_keys = sorted(k for k in self.weights if k.endswith("relative_position_index"))
        self.assertEqual(len(index_keys), sum(DEPTHS))
        self.assertEqual(sorted(info["computed"]), index_keys)
        for key in index_keys:
            self.assertEqual(new_sd[key].dtype, torch.int64)
            self.assertTrue(torch.equal(new_sd[key], reference_index(WINDOW)), key)

    def test_unknown_keys_raise(self):
        for sd in (official_state_dict(self.weights), timm_state_dict(self.weights)):
            sd["absolute_pos_embed"] = torch.zeros(1, EMBED, 14, 14)
            sd["layers.1.blocks.0.attn.extra"] = torch.zeros(1)
            msg = (
                r"2 unexpected key\(s\) .*\['absolute_pos_embed', 'layers.1.blocks.0.attn.extra'\]"
            )
            with self.assertRaisesRegex(tool.ConversionError, msg):
                tool.convert_state_dict(sd)
        # A stage-0 merging key makes a headless timm file "official": no stage-3 merging there.
        sd = {k: v for k, v in timm_state_dict(self.weights).items() if not k.startswith("head")}
        sd["layers.0.downsample.norm.weight"] = torch.zeros(4 * EMBED)
        msg = r"3 unexpected key\(s\) in the official layout: \['layers.3.downsample.norm.bias'"
        with self.assertRaisesRegex(tool.ConversionError, msg):
            tool.convert_state_dict(sd)

    def test_bad_relative_position_index(self):
        sd = official_state_dict(self.weights)
        sd["layers.1.blocks.1.attn.relative_position_index"] = reference_index(WINDOW).t()
        with self.assertRaisesRegex(tool.ConversionError, "layers.1.blocks.1.attn.relative_posi"):
            tool.convert_state_dict(sd)

    def test_wrong_shape(self):
        sd = official_state_dict(self.weights)
        sd["layers.1.blocks.0.mlp.fc2.bias"] = torch.zeros(5)
        with self.assertRaisesRegex(tool.ConversionError, r"wrong shapes: \['backbone.layers.1"):
            tool.convert_state_dict(sd)


class TestMain(unittest.TestCase):
    def setUp(self):
        self.weights = swin_weights(seed=1)
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _save_official(self):
        torch.save({"model": official_state_dict(self.weights)}, self._path("swin.pth"))
        return self._path("swin.pth")

    def test_pkl_from_official(self):
        code, out, err = run_main([self._save_official(), self._path("out.pkl")])
        self.assertEqual((code, err), (0, ""))
        for key in EXPECTED_MISSING:
            self.assertIn(f"  {key}\n", out)
        self.assertIn(f"not in the checkpoint (left at init): {len(EXPECTED_MISSING)}\n", out)
        with open(self._path("out.pkl"), "rb") as f:
            data = pickle.load(f)
        self.assertEqual(data["__author__"], "semask_d2.tools.convert_swin_imagenet")
        self.assertIs(data["matching_heuristics"], False)
        self.assertEqual(sorted(data["model"]), sorted(self.weights))
        for key, value in self.weights.items():
            self.assertIsInstance(data["model"][key], np.ndarray)
            np.testing.assert_array_equal(data["model"][key], value.numpy(), err_msg=key)
        self.assertEqual(sorted(os.listdir(self.dir)), ["out.pkl", "swin.pth"])  # no temp left

    def test_pth_from_timm(self):
        for container in ("bare", "state_dict"):
            sd = timm_state_dict(self.weights)
            torch.save(sd if container == "bare" else {"state_dict": sd}, self._path("timm.pth"))
            out = self._path(f"{container}.pth")
            self.assertEqual(run_main([self._path("timm.pth"), out])[0], 0)
            data = torch.load(out, weights_only=True)
            self.assertIs(data["matching_heuristics"], False)
            self.assertEqual(sorted(data["model"]), sorted(self.weights))
            for key, value in self.weights.items():
                self.assertTrue(torch.equal(data["model"][key], value), key)

    def test_refuses_existing_output(self):
        src, out = self._save_official(), self._path("out.pkl")
        with open(out, "wb") as f:
            f.write(b"keep")
        code, _, err = run_main([src, out])
        self.assertEqual(code, 2)
        self.assertEqual(err, f"error: {out} exists; pass --overwrite to replace it\n")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"keep")
        self.assertEqual(run_main([src, out, "--overwrite"])[0], 0)
        with open(out, "rb") as f:
            self.assertEqual(len(pickle.load(f)["model"]), len(self.weights))

    def test_bad_inputs(self):
        with open(self._path("notes.txt"), "w") as f:
            f.write("not a checkpoint\n")
        torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, self._path("mlp.pth"))
        torch.save({"epoch": 3}, self._path("meta.pth"))
        sd = official_state_dict(self.weights)
        sd["head.extra"] = torch.zeros(1)
        torch.save(sd, self._path("extra.pth"))
        cases = {
            "missing.pth": "input checkpoint not found",
            "notes.txt": "cannot read .* as a PyTorch checkpoint",
            "mlp.pth": "not an official or timm Swin state dict",
            "meta.pth": "holds no state dict of tensors",
            "extra.pth": r"1 unexpected key\(s\) in the official layout: \['head.extra'\]",
        }
        for name, msg in cases.items():
            code, out, err = run_main([self._path(name), self._path("out.pkl")])
            self.assertEqual((code, out), (2, ""), name)
            self.assertRegex(err, f"^error: .*{msg}", name)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertFalse(os.path.exists(self._path("out.pkl")))
        out = self._path("out.bin")
        code, _, err = run_main([self._save_official(), out])
        self.assertEqual((code, err), (2, f"error: output must end in .pkl or .pth: {out}\n"))


class TestDetectionCheckpointerLoad(unittest.TestCase):
    def test_load_without_heuristics(self):
        weights = swin_weights(seed=2)
        sources = {"official": {"model": official_state_dict(weights)}}
        sources["timm"] = timm_state_dict(weights)
        with tempfile.TemporaryDirectory() as tmp:
            for layout, checkpoint in sources.items():
                torch.save(checkpoint, os.path.join(tmp, f"{layout}.pth"))
                out = os.path.join(tmp, f"{layout}.pkl")
                self.assertEqual(run_main([os.path.join(tmp, f"{layout}.pth"), out])[0], 0)

                model = nn.Module()
                model.backbone = D2SeMaskSwinTransformer(
                    **ARCH, num_classes=5, sem_window_size=WINDOW, drop_path_rate=0.0
                )
                checkpointer = DetectionCheckpointer(model)
                data = checkpointer._load_file(out)
                self.assertIs(data["matching_heuristics"], False)
                incompatible = checkpointer._load_model(data)
                self.assertEqual(incompatible.unexpected_keys, [], layout)
                self.assertEqual(incompatible.incorrect_shapes, [], layout)
                self.assertEqual(sorted(incompatible.missing_keys), EXPECTED_MISSING, layout)
                state = model.state_dict()
                for key, value in weights.items():
                    self.assertTrue(torch.equal(state[key], value), key)


if __name__ == "__main__":
    unittest.main()

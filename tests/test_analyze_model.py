"""
tools/analyze_model.py and the fvcore operator handles of semask_d2.utils.flop_handles: each
handle against multiply-adds counted by hand, the tool end to end on tiny models, and every
command of MODEL_ZOO.md (configs merge, scripts exist, flags parse).
"""

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import tempfile
import unittest
from unittest import mock

import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torchvision.ops import deform_conv2d

from detectron2.config import get_cfg

from model_fixtures import CONFIG_DIR, TINY_CONFIGS, write_tiny_config
from script_loader import REPO, load_script
from semask_d2 import add_semask_config
from semask_d2.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn
from semask_d2.utils.flop_handles import FLOP_HANDLES, UNCOUNTED_ELEMENTWISE_OPS


class _Function(nn.Module):
    """A module calling `fn` on its inputs, so fvcore can trace a bare op; `modules` are the
    modules `fn` calls (registered, so that their weights are traced as parameters)."""

    def __init__(self, fn, modules=()):
        super().__init__()
        self.fn = fn
        self.called = nn.ModuleList(modules)

    def forward(self, *inputs):
        return self.fn(*inputs)


def count(fn, *inputs, modules=()):
    """(total, by operator) of fvcore with our handles on `fn(*inputs)`."""
    flops = FlopCountAnalysis(_Function(fn, modules), inputs).set_op_handle(**FLOP_HANDLES)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return flops.total(), dict(flops.by_operator())


class TestFlopHandles(unittest.TestCase):
    def test_scaled_dot_product_attention(self):
        q, k, v = torch.rand(2, 3, 5, 4), torch.rand(2, 3, 7, 4), torch.rand(2, 3, 7, 6)
        # Q K^T: 2*3 heads x 5 queries x 7 keys x 4 dims; weights @ V: 2*3 x 5 x 7 x 6.
        self.assertEqual(count(F.scaled_dot_product_attention, q, k, v)[0], 840 + 1260)
        # A mask and a scale are elementwise: the same count.
        mask = torch.rand(5, 7)
        total, ops = count(
            lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=1.0),
            q, k, v, mask,
        )  # fmt: skip
        self.assertEqual((total, ops), (2100, {"scaled_dot_product_attention": 2100}))
        # Keys and values broadcast over the batch: the count follows the output's batch.
        k1, v1 = torch.rand(1, 3, 7, 4), torch.rand(1, 3, 7, 6)
        self.assertEqual(count(F.scaled_dot_product_attention, q, k1, v1)[0], 2100)

    def test_baddbmm(self):
        bias, a, b = torch.rand(2, 5, 6), torch.rand(2, 5, 4), torch.rand(2, 4, 6)
        self.assertEqual(count(torch.baddbmm, bias, a, b), (2 * 5 * 4 * 6, {"baddbmm": 240}))

    def test_deform_conv2d(self):
        # 4 input channels, 3x3 kernel, 2 offset groups, padding 1: output (1, 8, 6, 6).
        x = torch.rand(1, 4, 6, 6)
        offset, mask = torch.rand(1, 2 * 9 * 2, 6, 6), torch.rand(1, 9 * 2, 6, 6)
        sampling = 4 * 4 * 9 * 36  # 4 per sampled value: Cin x kh x kw x Ho x Wo
        for groups, conv in ((1, 8 * 4 * 9 * 36), (2, 8 * 2 * 9 * 36)):  # Cout x Cin/groups ...
            weight = torch.rand(8, 4 // groups, 3, 3)
            with self.subTest(groups=groups):
                total, ops = count(
                    lambda x, o, m, w: deform_conv2d(x, o, w, padding=1, mask=m),
                    x, offset, mask, weight,
                )  # fmt: skip
                self.assertEqual(ops, {"deform_conv2d": conv + sampling})
                self.assertEqual(total, {1: 15552, 2: 10368}[groups])

    def test_addcmul(self):
        out, a, b = torch.rand(3, 4, 5), torch.rand(3, 4, 5), torch.rand(4, 5)
        self.assertEqual(count(torch.addcmul, out, a, b)[0], 60)
        self.assertEqual(count(lambda o, a, b: o.clone().addcmul_(a, b), out, a, b)[0], 60)

    def test_fvcore_defaults_we_rely_on(self):
        # grid_sampler: 4 per output value (bilinear), output (2, 3, 5, 7).
        value, grid = torch.rand(2, 3, 8, 8), torch.rand(2, 5, 7, 2) * 2 - 1
        sample = lambda v, g: F.grid_sample(v, g, align_corners=False)  # noqa: E731
        self.assertEqual(count(sample, value, grid)[0], 4 * 2 * 3 * 5 * 7)
        # Mask logits (Mask2Former/MaskFormer predictors): b x q x c x h x w.
        logits = lambda e, f: torch.einsum("bqc,bchw->bqhw", e, f)  # noqa: E731
        self.assertEqual(count(logits, torch.rand(2, 3, 4), torch.rand(2, 4, 5, 6))[0], 720)
        # Semantic inference: q x c x h x w.
        semseg = lambda p, m: torch.einsum("qc,qhw->chw", p, m)  # noqa: E731
        self.assertEqual(count(semseg, torch.rand(3, 4), torch.rand(3, 5, 6))[0], 360)

    def test_multi_scale_deformable_attention_module(self):
        torch.manual_seed(0)
        attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2).eval()
        shapes = [(4, 4), (2, 2)]
        query, value = torch.rand(1, 5, 8), torch.rand(1, 20, 8)
        refs = torch.rand(1, 5, 2, 2)
        total, ops = count(
            lambda q, r, v: attn(q, r, v, shapes), query, refs, value, modules=[attn]
        )
        expected = {
            # value_proj: C x C x S values.
            "baddbmm": 8 * 8 * 20,
            # sampling_offsets (C -> M*L*P*2), attention_weights (C -> M*L*P), output_proj.
            "linear": 5 * 8 * 16 + 5 * 8 * 8 + 5 * 8 * 8,
            # Per level, (N*M, D, P, Lq) samples at 4 each.
            "grid_sampler": 2 * 4 * (2 * 4 * 2 * 5),
            # Weighted sum over the P samples of each level: one multiply, then P - 1 fused
            # multiply-adds of (N*M, D, Lq); the multiplies and the sum over levels are
            # elementwise (detectron2 ignores aten::mul and aten::add).
            "addcmul_": 2 * 1 * (2 * 4 * 5),
        }
        self.assertEqual(ops, expected)
        self.assertEqual(total, 1280 + 1280 + 640 + 80)


FAPN_TINY_CONFIG = (
    "ade20k/semantic-segmentation/semask_fapn/fapn_maskformer2_semask_swin_tiny_bs16_160k.yaml"
)


class TestAnalyzeModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tool = load_script("tools/analyze_model.py")
        cls.tmp = tempfile.TemporaryDirectory()
        bases = {**TINY_CONFIGS, "fapn": FAPN_TINY_CONFIG}
        cls.configs = {
            family: write_tiny_config(
                os.path.join(cls.tmp.name, f"{family}.yaml"),
                os.path.join(CONFIG_DIR, base),
                {"MODEL": {"SEM_SEG_HEAD": {"NUM_CLASSES": 5}}, "DATASETS": {"TEST": []}},
            )
            for family, base in bases.items()
        }

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_tool(self, argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = self.tool.main(argv)
        return code, out.getvalue(), err.getvalue()

    def analyze(self, family, *extra, tasks=None):
        path = os.path.join(self.tmp.name, f"{family}.json")
        argv = ["--config-file", self.configs[family], "--tasks", *(tasks or self.tool.TASKS)]
        code, out, err = self.run_tool(argv + ["--json", path, *extra])
        self.assertEqual(code, 0, err)
        with open(path) as f:
            return json.load(f), out

    def expected_parameters(self, family):
        cfg = self.tool.setup_cfg(self.configs[family], [], "cpu")
        model = self.tool.build_model(cfg)
        return sum(p.numel() for p in model.parameters())

    def test_fpn_every_task(self):
        report, out = self.analyze("fpn", "--size", "64", "96")
        self.assertEqual(report["input_size"], [64, 96])
        self.assertEqual(report["parameter"]["total"], self.expected_parameters("fpn"))
        flops = report["flop"]
        self.assertEqual(flops["unsupported"], {})
        self.assertTrue(set(flops["uncounted_elementwise"]) <= UNCOUNTED_ELEMENTWISE_OPS)
        # The Swin MLP activation, in place under no_grad.
        self.assertIn("aten::gelu_", flops["uncounted_elementwise"])
        ops = set(flops["by_operator"])
        self.assertTrue({"conv", "linear", "scaled_dot_product_attention"} <= ops, ops)
        self.assertAlmostEqual(sum(flops["by_operator"].values()), flops["total"], delta=1e-3)
        self.assertEqual(flops["total_std"], 0.0)
        self.assertGreater(report["activation"]["by_operator"]["scaled_dot_product_attention"], 0)
        self.assertIn("SeMaskFPNHead", out)
        self.assertIn(f"Parameters: {report['parameter']['total']:,}", out)
        self.assertIn("Unsupported, no handle (cost missing from the total): none", out)

    def test_mask2former_counts_deformable_attention(self):
        report, _ = self.analyze("mask2former", "--num-inputs", "2")
        # The crop of the shipped SeMask-T Mask2Former config.
        self.assertEqual(report["input_size"], [512, 512])
        self.assertEqual(report["parameter"]["total"], self.expected_parameters("mask2former"))
        flops = report["flop"]
        self.assertEqual(flops["unsupported"], {})
        for op in ("baddbmm", "grid_sampler", "addcmul_", "einsum", "scaled_dot_product_attention"):
            self.assertGreater(flops["by_operator"].get(op, 0), 0, op)
        self.assertEqual(flops["total_std"], 0.0)

    def test_fapn_counts_deformable_convolution(self):
        report, _ = self.analyze("fapn", "--size", "64", "64", tasks=["flop"])
        flops = report["flop"]
        self.assertEqual(flops["unsupported"], {})
        # Three FeatureAlign modules, each one modulated deformable 3x3 conv (32 -> 32
        # channels) at strides 16, 8, 4 of a 64x64 image: conv plus 4 per sampled value.
        positions = 4 * 4 + 8 * 8 + 16 * 16
        expected = (32 * 32 * 9 + 4 * 32 * 9) * positions
        self.assertEqual(flops["by_operator"]["deform_conv2d"], expected)

    def test_flops_scale_with_the_image(self):
        small, _ = self.analyze("fpn", "--size", "128", "128")
        large, _ = self.analyze("fpn", "--size", "256", "256")
        # Every stage is a whole number of 4x4 windows at both sizes (no window padding), so the
        # convolutions and linear layers see exactly 4x the positions.
        for op in ("conv", "linear"):
            self.assertEqual(large["flop"]["by_operator"][op], 4 * small["flop"]["by_operator"][op])

    def test_unhandled_ops_are_listed(self):
        class Cumulative(nn.Module):
            def forward(self, batched_inputs):
                x = batched_inputs[0]["image"].float()
                return [{"sem_seg": torch.logcumsumexp(F.gelu(x), dim=1)}]

        batches = [[{"image": torch.rand(3, 4, 5)}]]
        flops = self.tool.count_flops(Cumulative(), batches, max_depth=1)
        self.assertEqual(flops["unsupported"], {"aten::logcumsumexp": 1})
        self.assertEqual(flops["uncounted_elementwise"], {"aten::gelu": 1})
        self.assertEqual(flops["total"], 0)

    def test_user_errors(self):
        missing = os.path.join(self.tmp.name, "missing.yaml")
        code, _, err = self.run_tool(["--config-file", missing, "--tasks", "parameter"])
        self.assertEqual((code, err.strip()), (1, f"error: config file not found: {missing}"))
        # --tasks takes several values: the KEY VALUE overrides come after --config-file.
        argv = ["--tasks", "flop", "--config-file", self.configs["fpn"]]
        code, _, err = self.run_tool(argv + ["INPUT.CROP.ENABLED", "False"])
        self.assertEqual(code, 1)
        self.assertIn("no fixed crop size (INPUT.CROP.ENABLED False", err)
        self.assertIn("pass --size H W", err)
        code, _, err = self.run_tool(argv + ["--size", "0", "64"])
        self.assertEqual(code, 1)
        self.assertIn("--size must be two positive integers", err)
        code, _, err = self.run_tool(argv + ["MODEL.NO_SUCH_KEY", "1"])
        self.assertEqual(code, 1)
        self.assertIn("MODEL.NO_SUCH_KEY", err)


# A command line of MODEL_ZOO.md: the interpreter, a script of this repository, its arguments.
_COMMAND = re.compile(r"^\.venv/bin/python (\S+\.py)\b")


def zoo_commands():
    """The `.venv/bin/python SCRIPT ...` commands of MODEL_ZOO.md, continuations joined."""
    with open(os.path.join(REPO, "MODEL_ZOO.md")) as f:
        text = f.read().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if _COMMAND.match(line.strip())]


class _Captured(Exception):
    pass


def script_parser(script):
    """The ArgumentParser a script builds, caught when its entry point parses arguments."""
    module = load_script(script)
    entry = getattr(module, "invoke_main", None) or module.main
    captured = []

    def capture(parser, args=None, namespace=None):
        captured.append(parser)
        raise _Captured

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        with contextlib.suppress(_Captured):
            entry()
    return captured[0]


class TestModelZooCommands(unittest.TestCase):
    def test_every_command_parses(self):
        commands = zoo_commands()
        scripts = {_COMMAND.match(c).group(1) for c in commands}
        self.assertEqual(
            scripts,
            {
                "tools/convert_swin_imagenet.py",
                "tools/convert_semask_fpn_mmseg.py",
                "tools/analyze_model.py",
                "train_net.py",
            },
        )
        parsers = {s: script_parser(s) for s in scripts}
        configs = set()
        for command in commands:
            script, *argv = shlex.split(command)[1:]
            with self.subTest(command=command):
                self.assertTrue(os.path.isfile(os.path.join(REPO, script)), script)
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    try:
                        args = parsers[script].parse_args(argv)
                    except SystemExit:
                        self.fail(err.getvalue())
                if getattr(args, "config_file", None):
                    self.assert_merges(args.config_file, args.opts)
                    configs.add(args.config_file)
        # One evaluation per released checkpoint, on 17 distinct configs or fewer.
        evaluations = [c for c in commands if "train_net.py" in c and "--eval-only" in c]
        self.assertEqual(len(evaluations), 17)

    def assert_merges(self, config_file, opts):
        path = os.path.join(REPO, config_file)
        self.assertTrue(os.path.isfile(path), config_file)
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.merge_from_file(path)
        cfg.merge_from_list(opts)

    def test_weights_come_from_the_conversion_commands(self):
        converted = {
            "tools/convert_semask_fpn_mmseg.py": set(),
            "tools/convert_swin_imagenet.py": set(),
        }
        evaluations = []
        for command in zoo_commands():
            script, *argv = shlex.split(command)[1:]
            if script in converted:
                converted[script].add(argv[1])
            elif "--eval-only" in argv:
                evaluations.append(argv)
        for argv in evaluations:
            config_file = argv[argv.index("--config-file") + 1]
            with self.subTest(config=config_file):
                # The released mmseg SeMask-FPN files are evaluated after conversion.
                weights = argv[argv.index("MODEL.WEIGHTS") + 1]
                converted_fpn = converted["tools/convert_semask_fpn_mmseg.py"]
                self.assertEqual(weights in converted_fpn, "/semask_fpn/" in config_file)
                # The recipe's starting point is one of the converted ImageNet Swin files.
                cfg = get_cfg()
                add_semask_config(cfg)
                cfg.merge_from_file(os.path.join(REPO, config_file))
                self.assertIn(cfg.MODEL.WEIGHTS, converted["tools/convert_swin_imagenet.py"])


if __name__ == "__main__":
    unittest.main()

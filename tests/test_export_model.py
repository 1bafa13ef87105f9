"""
ONNX export (semask_d2/export, tools/export_model.py) on tiny models: the single-image graph
against the meta-architecture, the traceable Swin window order against its definition, and
exported graphs run by ONNX Runtime against PyTorch at three sizes (one export per family:
H and W are dynamic).
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np
import onnx
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from semask_d2 import add_semask_config
from semask_d2.export import (
    ExportError,
    build_sem_seg_graph,
    compare_sem_seg,
    export_onnx,
    onnxruntime_session,
)
from semask_d2.modeling.backbone.swin_blocks import (
    build_shift_mask,
    window_order_uncached,
    window_partition,
)

from model_fixtures import CONFIG_DIR, TINY_CONFIGS, shrink, tiny_cfg, tiny_model, tiny_opts
from script_loader import load_script

# detectron2-style padded FPN inference (pad to 32, logits x4), beside the recipe's unpadded one.
FPN_PADDED = ["MODEL.SWIN.SIZE_DIVISIBILITY", "32", "MODEL.SEM_SEG_HEAD.LOGITS_RESIZE", "stride"]
# The tiny FPN of the tool and benchmark runs: the recipe (unpadded), 4 classes, random weights.
FPN_OPTS = tiny_opts("SemanticSegmentor")
FPN_OPTS += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "MODEL.WEIGHTS", ""]
PANOPTIC_CONFIG = (
    "ade20k/panoptic-segmentation/semask_mask2former/maskformer2_semask_swin_tiny_bs16_160k.yaml"
)
# Sizes of the parity checks: a multiple of 32, neither side a multiple of 32, a wide one.
SIZES = [(64, 64), (45, 71), (40, 100)]


def _image(height, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=gen).float()


def _tiny_panoptic_cfg():
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, PANOPTIC_CONFIG))
    shrink(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4
    cfg.DATASETS.TEST = ()
    return cfg


def _model_sem_seg(model, image):
    with torch.no_grad():
        return model([{"image": image}])[0]["sem_seg"]


class TestWindowOrder(unittest.TestCase):
    """The closed-form window order and shift mask equal pad + roll + partition of an id map."""

    def test_gather_and_scatter(self):
        for h, w, ws, shift in [(5, 7, 3, 1), (6, 6, 3, 0), (4, 9, 4, 2), (1, 1, 4, 2)]:
            with self.subTest(h=h, w=w, ws=ws, shift=shift):
                hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
                ids = torch.full((hp, wp), h * w)
                ids[:h, :w] = torch.arange(h * w).view(h, w)
                ids = torch.roll(ids, (-shift, -shift), (0, 1))
                want = window_partition(ids.view(1, hp, wp, 1), ws).flatten()
                order = window_order_uncached(h, w, ws, shift, torch.device("cpu"))
                self.assertTrue(torch.equal(order.gather, want))
                # scatter inverts gather on the tokens
                self.assertTrue(torch.equal(order.gather[order.scatter], torch.arange(h * w)))

    def test_shift_mask_regions(self):
        # 6x6 grid, window 3, shift 1: region rows [0, 3), [3, 5), [5, 6), same for columns.
        mask = build_shift_mask(6, 6, 3, 1, torch.device("cpu"))
        self.assertEqual(tuple(mask.shape), (4, 9, 9))
        self.assertTrue(torch.equal(mask[0], torch.zeros(9, 9)))
        band = torch.tensor([0, 0, 1])  # rows 3, 4 | 5 of the last window row
        region = (band[:, None] * 3 + band[None, :]).flatten()
        want = torch.where(region[:, None] != region[None, :], -100.0, 0.0)
        self.assertTrue(torch.equal(mask[3], want))


class TestSemSegGraph(unittest.TestCase):
    """The eager graph reproduces the model's `sem_seg` exactly, before any export."""

    def test_graph_is_the_model(self):
        # the panoptic recipe (panoptic and instance on) with its semantic output turned on
        panoptic = ["MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True"]
        cases = [("fpn", []), ("fpn", FPN_PADDED), ("mask2former", []), ("panoptic", panoptic)]
        for family, opts in cases:
            cfg = tiny_cfg(family) if family != "panoptic" else _tiny_panoptic_cfg()
            cfg.merge_from_list(opts)
            model = tiny_model(cfg).eval()
            graph = build_sem_seg_graph(model)
            for height, width in [(45, 71), (64, 96)]:
                with self.subTest(family=family, opts=opts, size=(height, width)):
                    image = _image(height, width)
                    with torch.no_grad():
                        got = graph(image)
                    want = _model_sem_seg(model, image)
                    self.assertEqual(tuple(got.shape), (4, height, width))
                    self.assertTrue(torch.equal(got, want))

    def test_bgr_model_takes_rgb(self):
        cfg = tiny_cfg("mask2former")
        model = tiny_model(cfg).eval()
        image = _image(40, 48)
        with torch.no_grad():
            got = build_sem_seg_graph(model, "BGR")(image)
        self.assertTrue(torch.equal(got, _model_sem_seg(model, image.flip(0))))

    def test_unsupported_inputs_are_one_line_errors(self):
        with self.assertRaisesRegex(ExportError, "MODEL.META_ARCHITECTURE Linear cannot"):
            build_sem_seg_graph(torch.nn.Linear(2, 2))
        model = tiny_model(tiny_cfg("fpn")).eval()
        with self.assertRaisesRegex(ExportError, "INPUT.FORMAT 'L'"):
            build_sem_seg_graph(model, "L")
        with self.assertRaisesRegex(ExportError, "opset 16 is too old"):
            export_onnx(build_sem_seg_graph(model), _image(40, 40), "unused.onnx", opset=16)


class ExportTestCase(unittest.TestCase):
    """
    One export per test method, so that parallel workers never repeat one. Tolerances of the
    issue: FPN within 1e-4 everywhere; Mask2Former >= 99.9 % of values within 1e-4 and the
    argmax equal on >= 99.99 % of pixels (a sigmoid threshold in the masked attention can flip
    on float noise).
    """

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def parity(self, path, model, threads=2, sizes=SIZES):
        """Yields ((H, W), compare_sem_seg stats) of ONNX Runtime against `model` at `sizes`."""
        session = onnxruntime_session(path, threads)
        for height, width in sizes:
            image = _image(height, width, seed=height)
            out = session.run(None, {"image": image.numpy()})[0]
            self.assertEqual((out.dtype, out.shape), (np.float32, (4, height, width)))
            yield (height, width), compare_sem_seg(out, _model_sem_seg(model, image))

    def assert_graph_contract(self, path):
        proto = onnx.load(path)
        self.assertGreaterEqual(proto.opset_import[0].version, 17)
        (inp,), (out,) = proto.graph.input, proto.graph.output
        self.assertEqual((inp.name, out.name), ("image", "sem_seg"))
        self.assertEqual(inp.type.tensor_type.elem_type, onnx.TensorProto.FLOAT)
        dims = inp.type.tensor_type.shape.dim
        self.assertEqual(dims[0].dim_value, 3)
        # H and W symbolic; the output's are expressions of them (equal to them at run time,
        # see the parity checks)
        self.assertTrue(dims[1].dim_param and dims[2].dim_param)
        out_dims = out.type.tensor_type.shape.dim
        self.assertEqual(len(out_dims), 3)
        self.assertEqual(out_dims[0].dim_value, 4)
        self.assertTrue(all(d.dim_param for d in out_dims[1:]))


class TestFpnExport(ExportTestCase):
    def test_tool_export_parity_and_benchmark(self):
        # tools/export_model.py, with the seed that rebuilds the same random weights below
        tool = load_script("tools/export_model.py")
        out_dir = os.path.join(self.tmp, "fpn")
        path = os.path.join(out_dir, "model.onnx")
        argv = ["--config-file", os.path.join(CONFIG_DIR, TINY_CONFIGS["fpn"])]
        argv += ["--format", "onnx", "--output", out_dir, "--threads", "1"] + FPN_OPTS
        report = io.StringIO()
        torch.manual_seed(0)
        with contextlib.redirect_stdout(report):
            self.assertEqual(tool.main(argv), 0)
        torch.manual_seed(0)
        model = build_model(tool.setup_cfg(tool.parse_args(argv))).eval()

        lines = [line for line in report.getvalue().splitlines() if not line.startswith("[")]
        lines = [line for line in lines if not line.startswith("WARNING")]  # log lines
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith(f"Wrote {path} ("), lines)
        self.assertIn("onnx.checker passed", lines[0])
        # the generated sample: INPUT.MIN_SIZE_TEST squared
        self.assertIn("512x512 image, sem_seg (4, 512, 512): largest difference", lines[1])
        self.assert_graph_contract(path)

        for size, stats in self.parity(path, model):
            with self.subTest(size=size):
                self.assertLessEqual(stats["max_abs_diff"], 1e-4)
        # traced for H, W >= 33; the FPN accepts smaller images and the graph follows it
        ((_, stats),) = self.parity(path, model, threads=1, sizes=[(20, 37)])
        self.assertLessEqual(stats["max_abs_diff"], 1e-4)
        self.check_benchmark(path)

    def check_benchmark(self, onnx_path):
        # tools/benchmark.py: the exported graph in PyTorch eager and in ONNX Runtime
        benchmark = load_script("tools/benchmark.py")
        path = os.path.join(self.tmp, "rows.json")
        argv = ["--config-file", os.path.join(CONFIG_DIR, TINY_CONFIGS["fpn"])]
        argv += ["--input-size", "64", "48", "--tasks", "graph,onnxruntime", "--device", "cpu"]
        argv += ["--threads", "1", "--json", path, "--onnx-model", onnx_path] + FPN_OPTS
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(benchmark.main(argv), 0)
        with open(path) as f:
            rows = json.load(f)
        self.assertEqual([r["task"] for r in rows], ["graph", "onnxruntime"])
        for row in rows:
            self.assertEqual((row["input"], row["batch"]), ("64x48", 1))
            self.assertLessEqual(row["min_ms"], row["median_ms"])
            self.assertLessEqual(row["median_ms"], row["max_ms"])
        # ONNX counts its initializers: the weights inference uses and folded constants
        self.assertGreater(rows[1]["params"], 0.9 * rows[0]["params"])


class TestMask2FormerExport(ExportTestCase):
    def test_export_parity(self):
        # one decoder layer after the first prediction: attention masked by predicted masks
        cfg = tiny_cfg("mask2former")
        cfg.MODEL.MASK_FORMER.DEC_LAYERS = 2
        model = tiny_model(cfg).eval()
        path = os.path.join(self.tmp, "m2f.onnx")
        export_onnx(build_sem_seg_graph(model), _image(64, 96), path)
        self.assert_graph_contract(path)
        for size, stats in self.parity(path, model):
            with self.subTest(size=size):
                self.assertGreaterEqual(stats["within_1e-4"], 0.999)
                self.assertGreaterEqual(stats["argmax_agree"], 0.9999)


class TestExportToolErrors(unittest.TestCase):
    """Bad input ends with `error: ...` and status 1, before any export."""

    def _error(self, argv):
        tool = load_script("tools/export_model.py")
        with mock.patch.object(sys, "argv", ["export_model.py"] + argv):
            with self.assertRaises(SystemExit) as ctx:
                tool.invoke_main()
        return str(ctx.exception.code)

    def test_errors(self):
        config = os.path.join(CONFIG_DIR, TINY_CONFIGS["mask2former"])
        opts = tiny_opts("SeMaskMaskFormer") + ["MODEL.WEIGHTS", ""]
        message = self._error(["--config-file", config, "MODEL.NO_SUCH_KEY", "1"])
        self.assertTrue(message.startswith("error: ") and "MODEL.NO_SUCH_KEY" in message, message)
        message = self._error(["--config-file", config, "--sample-image", "no/such.png"] + opts)
        self.assertTrue(message.startswith("error: --sample-image no/such.png"), message)
        with tempfile.TemporaryDirectory() as tmp:
            small = os.path.join(tmp, "small.png")
            Image.fromarray(np.zeros((20, 90, 3), dtype=np.uint8)).save(small)
            message = self._error(["--config-file", config, "--sample-image", small] + opts)
        self.assertEqual(
            message,
            "error: the sample image is 20x90; tracing needs at least 33x33: pass a larger "
            "--sample-image",
        )


if __name__ == "__main__":
    unittest.main()

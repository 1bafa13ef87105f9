"""tools/benchmark.py and tools/benchmark_vs_transformers.py on tiny models and hand tensors."""

import contextlib
import importlib.util
import io
import json
import multiprocessing
import os
import tempfile
import unittest

import torch
import torch.nn.functional as F

from model_fixtures import tiny_opts
from script_loader import load_script

TINY_CONFIG = os.path.join(
    os.path.dirname(__file__),
    "..",
    "configs/ade20k/semantic-segmentation/semask_mask2former/"
    "maskformer2_semask_swin_tiny_bs16_160k.yaml",
)
# The tiny model of the tests, 5 classes, no test set.
TINY_OPTS = tiny_opts("SeMaskMaskFormer") + [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "DATASETS.TEST", "()",
]  # fmt: skip


def _report_peak(queue):
    # In a spawned process: its own peak RSS, from the helper the benchmarks use.
    queue.put(load_script("tools/benchmark.py").peak_rss_mb())


def has_transformers():
    return importlib.util.find_spec("transformers") is not None


class TestBenchmark(unittest.TestCase):
    def test_peak_rss_is_the_spawned_process_own(self):
        # The parent holds an extra 1 GiB; a spawned child's peak must not include it (Linux
        # keeps ru_maxrss across fork + exec, VmHWM starts afresh).
        benchmark = load_script("tools/benchmark.py")
        ballast = torch.ones(2**28)  # 1 GiB, touched
        parent = benchmark.current_rss_mb()
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_report_peak, args=(queue,))
        child.start()
        peak = queue.get()
        child.join()
        del ballast
        self.assertGreater(peak, 0)
        self.assertLess(peak, parent - 512)

    def test_main_on_a_tiny_model(self):
        benchmark = load_script("tools/benchmark.py")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "rows.json")
            argv = ["--config-file", TINY_CONFIG, "--input-size", "64", "48", "--batch-size", "2"]
            argv += ["--tasks", "inference,train", "--device", "cpu", "--runs", "5"]
            argv += ["--warmup", "1", "--json", path] + TINY_OPTS
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(benchmark.main(argv), 0)
            with open(path) as f:
                rows = json.load(f)
        fields = ["task", "device", "input", "batch", "median_ms", "min_ms", "max_ms"]
        fields += ["peak_mem_mb", "params"]
        header = out.getvalue().splitlines()[0].split()
        self.assertEqual(header, fields)
        self.assertEqual([r["task"] for r in rows], ["inference", "train"])
        self.assertEqual([r["batch"] for r in rows], [1, 2])
        for row in rows:
            self.assertEqual(list(row), fields)
            self.assertEqual(row["input"], "64x48")
            self.assertLessEqual(row["min_ms"], row["median_ms"])
            self.assertLessEqual(row["median_ms"], row["max_ms"])
            self.assertGreater(row["params"], 0)

    def test_protocol_is_enforced(self):
        benchmark = load_script("tools/benchmark.py")
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            benchmark.parse_args(["--runs", "3"])
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            benchmark.parse_args(["--tasks", "inference,MODEL.DEVICE"])


class TestComparisonHelpers(unittest.TestCase):
    """Pure helpers of tools/benchmark_vs_transformers.py: no transformers needed."""

    @classmethod
    def setUpClass(cls):
        cls.tool = load_script("tools/benchmark_vs_transformers.py")

    def test_semantic_postprocess_formula(self):
        # 2 queries, 2 classes + no-object; 1x2 masks upsampled to 2x4.
        class_logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])
        mask_logits = torch.tensor([[[[0.0, 4.0]], [[-4.0, 0.0]]]])
        scores = self.tool.semantic_postprocess(class_logits, mask_logits, (2, 4))
        self.assertEqual(scores.shape, (1, 2, 2, 4))
        probs = class_logits.softmax(-1)[0, :, :2]  # no-object dropped after the softmax
        masks = F.interpolate(mask_logits, size=(2, 4), mode="bilinear", align_corners=False)
        for k in range(2):
            expected = (probs[:, k, None, None] * masks[0].sigmoid()).sum(0)
            torch.testing.assert_close(scores[0, k], expected)
        # Columns 0 and 3 copy the edge pixels (align_corners False).
        col0 = probs[0] * torch.sigmoid(torch.tensor(0.0)) + probs[1] * torch.sigmoid(
            torch.tensor(-4.0)
        )
        torch.testing.assert_close(scores[0, :, 0, 0], col0)

    def test_semantic_postprocess_casts_bf16(self):
        class_logits = torch.randn(1, 3, 4, dtype=torch.bfloat16)
        mask_logits = torch.randn(1, 3, 2, 2, dtype=torch.bfloat16)
        scores = self.tool.semantic_postprocess(class_logits, mask_logits, (4, 4))
        self.assertEqual(scores.dtype, torch.float32)
        self.assertEqual(scores.shape, (1, 3, 4, 4))

    def test_output_effect(self):
        reference = torch.zeros(1, 2, 1, 4)
        reference[0, 0] = 1.0
        scores = reference.clone()
        scores[0, 1, 0, 0] = 1.5  # pixel 0 changes its top class
        effect = self.tool.output_effect(scores, reference)
        self.assertEqual(effect, {"max_abs_diff": 1.5, "argmax_agreement": 0.75})

    def test_time_interleaved_rotates_the_order(self):
        calls = []
        runners = {name: (lambda n=name: calls.append(n)) for name in "abc"}
        times = self.tool.time_interleaved(runners, warmup=1, runs=5)
        self.assertEqual(calls[:6], list("abcbca"))
        self.assertEqual(len(calls), 18)
        self.assertEqual({k: len(v) for k, v in times.items()}, {"a": 5, "b": 5, "c": 5})

    def test_protocol_is_enforced(self):
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            self.tool.parse_args(["--runs", "4"])
        args = self.tool.parse_args(["--bf16"])
        self.assertTrue(args.bf16)
        self.assertEqual(args.threads, 2)
        self.assertEqual(tuple(args.input_size), (512, 512))


@unittest.skipUnless(has_transformers(), "transformers is not installed")
class TestComparisonWithTransformers(unittest.TestCase):
    """The in-process comparison on a tiny SeMask model and a tiny transformers Mask2Former."""

    def test_runners_share_the_input_and_post_processing(self):
        tool = load_script("tools/benchmark_vs_transformers.py")
        torch.manual_seed(0)
        # Neither the predictor's resize nor its padding to a multiple of 32 changes a 64 x 64
        # input (as with 512 x 512 and the real config), so both paths see the same tensor.
        argv = ["--config-file", TINY_CONFIG, "--input-size", "64", "64"] + TINY_OPTS
        args = tool.parse_args(argv + ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"])
        ours, cfg = tool.build_ours(args)
        tiny_swin = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        peer = tool.build_peer(
            5,
            swin=tiny_swin,
            feature_size=32,
            mask_feature_size=32,
            hidden_dim=32,
            encoder_feedforward_dim=64,
            dim_feedforward=64,
            encoder_layers=1,
            decoder_layers=3,
            num_attention_heads=2,
            num_queries=6,
        )
        runners = tool.make_runners(
            args, {"ours": ours, "transformers": peer}, cfg, ["fp32", "bf16"]
        )
        self.assertEqual(
            set(runners),
            {"ours fp32", "transformers fp32", "ours bf16", "transformers bf16", "ours predictor"},
        )
        for name in ("ours fp32", "transformers fp32", "ours bf16", "transformers bf16"):
            scores = runners[name]()
            self.assertEqual(scores.shape, (1, 5, 64, 64), name)
            self.assertEqual(scores.dtype, torch.float32, name)
        # The predictor path and the raw path of our model give the same scores.
        predicted = runners["ours predictor"]()["sem_seg"]
        torch.testing.assert_close(predicted, runners["ours fp32"]()[0], rtol=1e-4, atol=1e-5)
        effect = tool.output_effect(runners["ours bf16"](), runners["ours fp32"]())
        self.assertGreater(effect["argmax_agreement"], 0.5)


if __name__ == "__main__":
    unittest.main()

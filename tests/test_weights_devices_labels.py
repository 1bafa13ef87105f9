"""
What a new user hits first, through ``train_net.py`` as a user runs it: weights, devices and
labels give one clear line and exit status 1 (never a traceback), and nothing runs silently
wrong. Plus the pieces behind it, in process: the strict checkpointer, the machine fitting and
the non-finite-loss stop.
"""

import os
import tempfile
import unittest
from unittest import mock

import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from semask_d2 import add_semask_config
from semask_d2.data import register_sem_seg_dataset
from semask_d2.data.datasets import unregister
from semask_d2.engine import (
    NonFiniteLossError,
    StrictCheckpointer,
    WeightsError,
    cpu_threads_per_process,
    fit_config_to_machine,
    user_error_message,
)

from model_fixtures import tiny_cfg
from test_train_net import (
    FPN_T,
    TrainNetRunCase,
    read_metrics,
    run_to_end,
    train_net,
    write_ade20k_like,
    write_tiny_run_config,
)

# The longest line any run may log: an evaluation once printed ~30,000 characters on one.
MAX_LINE = 1000


def one_line_error(test, rc, out, err):
    """Exit status 1, an ``error: ...`` last line, no traceback; returns that line."""
    test.assertEqual(rc, 1, err[-3000:])
    test.assertNotIn("Traceback", out + err)
    last = err.strip().splitlines()[-1]
    test.assertTrue(last.startswith("error: "), last)
    return last


class TestFirstMinute(TrainNetRunCase):
    """One subprocess run per row of the user catalogue."""

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def eval_only(self, *opts):
        args = ["--eval-only", "--config-file", self.config, "OUTPUT_DIR", self.output]
        return run_to_end(args + list(opts), self.datasets)

    def save_tiny_checkpoint(self, name="tiny.pth"):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.merge_from_file(self.config)
        torch.manual_seed(0)
        torch.save({"model": build_model(cfg).state_dict()}, self.path(name))
        return self.path(name)

    def test_validation_label_above_the_classes(self):
        label = os.path.join(
            self.datasets, "ADEChallengeData2016/annotations_detectron2/validation/002.png"
        )
        values = np.asarray(Image.open(label)).copy()
        values[0, :4] = 200  # 150 classes: 0..149, ignore 255
        Image.fromarray(values).save(label)
        last = one_line_error(self, *self.eval_only())
        self.assertIn(label, last)
        self.assertIn("value(s) 200 outside the classes 0..149", last)
        self.assertIn("Fix:", last)

    def test_checkpoint_of_another_model_size(self):
        weights = self.save_tiny_checkpoint()
        # The tiny T-like model's checkpoint, evaluated with one more block in stage 3 (as a
        # SeMask-T checkpoint with a SeMask-S config).
        last = one_line_error(
            self, *self.eval_only("MODEL.WEIGHTS", weights, "MODEL.SWIN.DEPTHS", "[1, 1, 3, 1]")
        )
        self.assertIn(f"MODEL.WEIGHTS {weights} does not fit the model", last)
        self.assertRegex(last, r"\d+ missing key\(s\) \(e\.g\. backbone\.layers\.2\.blocks\.2\.")
        self.assertIn("MODEL.WEIGHTS_PARTIAL", last)
        self.assertFalse(os.path.exists(os.path.join(self.output, "inference")))

    def test_partial_loading_on_request(self):
        weights = self.save_tiny_checkpoint()
        rc, out, err = self.eval_only(
            "MODEL.WEIGHTS", weights, "MODEL.SWIN.DEPTHS", "[1, 1, 3, 1]",
            "MODEL.WEIGHTS_PARTIAL", "True",
        )  # fmt: skip
        self.assertEqual(rc, 0, err[-3000:])
        self.assertIn("Some model parameters or buffers are not found in the checkpoint", out + err)

    def test_shipped_config_without_imagenet_weights(self):
        rc, out, err = run_to_end(
            ["--config-file", FPN_T, "OUTPUT_DIR", self.output, "SOLVER.MAX_ITER", "1"],
            self.datasets,
        )
        last = one_line_error(self, rc, out, err)
        self.assertIn("MODEL.WEIGHTS swin_tiny_patch4_window7_224.pkl not found", last)
        self.assertIn(
            "python tools/convert_swin_imagenet.py swin_tiny_patch4_window7_224.pth "
            "swin_tiny_patch4_window7_224.pkl",
            last,
        )

    def test_unusable_weights_files(self):
        random_bytes = self.path("random.pth")
        with open(random_bytes, "wb") as f:
            f.write(np.random.RandomState(0).bytes(10_000))
        truncated = self.save_tiny_checkpoint("truncated.pth")
        with open(truncated, "r+b") as f:
            f.truncate(os.path.getsize(truncated) // 2)
        cases = {
            self.path("missing.pth"): "not found",
            random_bytes: "is not a readable checkpoint",
            truncated: "is not a readable checkpoint",
            # Port 9 on loopback: refused at once, as an unreachable host would be.
            "http://127.0.0.1:9/model_final.pth": "cannot be fetched",
        }
        for weights, expected in cases.items():
            with self.subTest(weights=weights):
                last = one_line_error(self, *self.eval_only("MODEL.WEIGHTS", weights))
                self.assertIn(f"MODEL.WEIGHTS {weights} {expected}", last)
                self.assertNotIn("weights_only", last)

    @unittest.skipIf(torch.cuda.is_available(), "the CUDA fallback needs a machine without CUDA")
    def test_cuda_device_without_cuda_trains_on_the_cpu(self):
        args = ["--config-file", self.config, "OUTPUT_DIR", self.output, "SOLVER.MAX_ITER", "2"]
        rc, out, err = run_to_end(args + ["MODEL.DEVICE", "cuda"], self.datasets)
        self.assertEqual(rc, 0, err[-3000:])
        log = out + err
        self.assertEqual(log.count("CUDA is not available here: running on the CPU"), 1)
        self.assertTrue(any("sem_seg/mIoU" in m for m in read_metrics(self.output)))
        self.assertLessEqual(max(len(line) for line in log.splitlines()), MAX_LINE)


class TestStrictCheckpointer(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.cfg = tiny_cfg("fpn", num_classes=3)
        torch.manual_seed(0)
        self.model = build_model(self.cfg)

    def tearDown(self):
        self.tmp.cleanup()

    def save(self, state, name="w.pth"):
        path = os.path.join(self.tmp.name, name)
        torch.save({"model": state}, path)
        return path

    def test_full_checkpoint_loads_exactly(self):
        state = {
            k: v + 1 if v.is_floating_point() else v for k, v in self.model.state_dict().items()
        }
        StrictCheckpointer(build_model(self.cfg)).load(self.save(state))

    def test_backbone_checkpoint_may_lack_head_semantic_layers_and_norms(self):
        state = {
            k: v
            for k, v in self.model.state_dict().items()
            if k.startswith("backbone.") and ".semantic_layer." not in k and ".norm" not in k[9:14]
        }
        StrictCheckpointer(build_model(self.cfg)).load(self.save(state))
        # The same holes in a checkpoint that has head keys are refused.
        state["sem_seg_head.predictor.bias"] = self.model.state_dict()[
            "sem_seg_head.predictor.bias"
        ]
        with self.assertRaisesRegex(WeightsError, r"missing key\(s\) \(e\.g\. backbone\."):
            StrictCheckpointer(build_model(self.cfg)).load(self.save(state))

    def test_shape_mismatch_and_unexpected_keys_are_errors(self):
        state = dict(self.model.state_dict())
        state["sem_seg_head.predictor.bias"] = torch.zeros(7)
        state["backbone.extra.weight"] = torch.zeros(1)
        with self.assertRaises(WeightsError) as ctx:
            StrictCheckpointer(build_model(self.cfg)).load(self.save(state))
        message = str(ctx.exception)
        self.assertIn("1 unexpected key(s) (e.g. backbone.extra.weight)", message)
        self.assertIn(
            "1 wrong shape key(s) (e.g. sem_seg_head.predictor.bias (7,) vs model (3,))", message
        )
        self.assertNotIn("missing", message)
        self.assertNotIn("\n", message)

    def test_num_batches_tracked_may_be_missing(self):
        state = {k: v for k, v in self.model.state_dict().items() if "num_batches_tracked" not in k}
        StrictCheckpointer(build_model(self.cfg)).load(self.save(state))


class TestFitConfigToMachine(unittest.TestCase):
    def setUp(self):
        threads = torch.get_num_threads()
        self.addCleanup(torch.set_num_threads, threads)

    def cfg(self):
        cfg = tiny_cfg("fpn")
        cfg.MODEL.SEM_SEG_HEAD.NORM = "SyncBN"
        cfg.DATALOADER.NUM_WORKERS = 4
        return cfg

    def test_cpu_defaults(self):
        cfg = self.cfg()
        with (
            mock.patch.dict(os.environ),
            mock.patch("os.sched_getaffinity", return_value={0, 1, 2}),
        ):
            os.environ.pop("OMP_NUM_THREADS", None)
            warnings = fit_config_to_machine(cfg, processes=2, opts=[])
            self.assertEqual(torch.get_num_threads(), 1)
            self.assertEqual(cpu_threads_per_process(1), 3)
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NORM, "naiveSyncBN")
        self.assertEqual(cfg.DATALOADER.NUM_WORKERS, 1)
        self.assertEqual(len(warnings), 1)
        # The model builds with detectron2's NaiveSyncBatchNorm (BN in a single process).
        self.assertEqual(
            type(build_model(cfg).sem_seg_head.res2[0].norm).__name__, "NaiveSyncBatchNorm"
        )

    def test_user_settings_win(self):
        cfg = self.cfg()
        with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "2"}):
            torch.set_num_threads(2)
            fit_config_to_machine(cfg, processes=2, opts=["DATALOADER.NUM_WORKERS", "4"])
        self.assertEqual(torch.get_num_threads(), 2)
        self.assertEqual(cfg.DATALOADER.NUM_WORKERS, 4)

    @unittest.skipIf(torch.cuda.is_available(), "the CUDA fallback needs a machine without CUDA")
    def test_cuda_falls_back_to_cpu(self):
        cfg = self.cfg()
        cfg.MODEL.DEVICE = "cuda"
        warnings = fit_config_to_machine(cfg, processes=1, opts=[])
        self.assertEqual(cfg.MODEL.DEVICE, "cpu")
        self.assertIn("CUDA is not available", warnings[0])


class TestNonFiniteLoss(unittest.TestCase):
    def test_stops_with_one_line_and_no_checkpoint(self):
        with tempfile.TemporaryDirectory() as tmp:
            write_ade20k_like(tmp)
            ade = os.path.join(tmp, "ADEChallengeData2016")
            name = "_semask_nan_train"
            register_sem_seg_dataset(
                name,
                os.path.join(ade, "images", "training"),
                os.path.join(ade, "annotations_detectron2", "training"),
                stuff_classes=["background", "red", "green"],
            )
            self.addCleanup(unregister, name)
            cfg = get_cfg()
            add_semask_config(cfg)
            cfg.merge_from_file(write_tiny_run_config(tmp))
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
            cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
            cfg.SOLVER.MAX_ITER = 3
            cfg.OUTPUT_DIR = os.path.join(tmp, "output")
            cfg.freeze()
            trainer = train_net.Trainer(cfg)
            model_forward = trainer.model.forward

            def nan_at_last_iteration(batched_inputs):
                losses = model_forward(batched_inputs)
                if trainer.iter == 2:
                    losses["loss_sem_seg"] = losses["loss_sem_seg"] * float("nan")
                return losses

            trainer.model.forward = nan_at_last_iteration
            with self.assertRaises(NonFiniteLossError) as ctx:
                trainer.train()
            message = user_error_message(ctx.exception)
            self.assertIn("NaN or infinite at iteration 2", message)
            self.assertNotIn("\n", message)
            self.assertEqual([f for f in os.listdir(cfg.OUTPUT_DIR) if f.endswith(".pth")], [])


if __name__ == "__main__":
    unittest.main()

"""
train_net.py end to end on CPU: a short training run, two-process DDP (gloo), kill -9 and
--resume, atomic checkpoints, and one-line errors for bad input.

The subprocess runs find their data through the package's builtin ADE20K-150 registration: the
tests write a tiny dataset in its layout (``ADEChallengeData2016/images/{training,validation}``
and ``annotations_detectron2/...``, labels 0..149) under a temporary ``$DETECTRON2_DATASETS``,
which a spawned ``train_net.py`` (and each of its DDP processes) registers at import.
"""

import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch import nn

from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from semask_d2 import add_semask_config
from semask_d2.data import DatasetError, register_sem_seg_dataset
from semask_d2.data.datasets import unregister
from semask_d2.engine import (
    AtomicDetectionCheckpointer,
    ConfigError,
    cpu_threads_per_process,
    user_error_message,
)
from semask_d2.engine.user_errors import hide_user_error_tracebacks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_net  # noqa: E402

from model_fixtures import write_tiny_config  # noqa: E402

FPN_T = os.path.join(
    REPO, "configs/ade20k/semantic-segmentation/semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml"
)
# The shipped SeMask-T FPN recipe shrunk to a few seconds of CPU: the tiny model of the tests,
# 64x64 crops, no warmup, no data-loader workers, evaluation only at the end.
TINY_RUN = {
    "MODEL": {"WEIGHTS": ""},
    "SOLVER": {
        "IMS_PER_BATCH": 4,
        "BASE_LR": 0.001,
        "MAX_ITER": 10,
        "WARMUP_ITERS": 0,
        "CHECKPOINT_PERIOD": 1000,
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": [64],
        "MAX_SIZE_TRAIN": 128,
        "MIN_SIZE_TEST": 64,
        "MAX_SIZE_TEST": 128,
        "CROP": {"SIZE": [64, 64]},
        "SIZE_DIVISIBILITY": 64,
        "COLOR_AUG_SSD": False,
    },
    "DATALOADER": {"NUM_WORKERS": 0},
    "TEST": {"EVAL_PERIOD": 0},
    "SEED": 0,
}
# Background, then two rectangles of classes 1 and 2, in well-separated colours.
COLORS = np.array([(40, 40, 40), (220, 60, 60), (60, 200, 90)], dtype=np.uint8)
SUBPROCESS_TIMEOUT = 240


def write_split(image_dir, label_dir, count, rng, size=64):
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for i in range(count):
        label = np.zeros((size, size), dtype=np.uint8)
        for cls in (1, 2):
            h, w = rng.integers(size // 4, size // 2, size=2)
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            label[y : y + h, x : x + w] = cls
        Image.fromarray(COLORS[label]).save(os.path.join(image_dir, f"{i:03d}.jpg"), quality=95)
        Image.fromarray(label).save(os.path.join(label_dir, f"{i:03d}.png"))


def write_ade20k_like(root):
    """8 training and 4 validation 64x64 images in the ADE20K-150 layout under `root`."""
    rng = np.random.default_rng(0)
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, count in (("training", 8), ("validation", 4)):
        image_dir = os.path.join(ade, "images", split)
        write_split(image_dir, os.path.join(ade, "annotations_detectron2", split), count, rng)


def write_tiny_run_config(folder):
    return write_tiny_config(os.path.join(folder, "tiny.yaml"), FPN_T, TINY_RUN)


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_train_net(args, datasets_root, threads="1", **popen_kwargs):
    """
    Start train_net.py in a child process with the test environment: OMP_NUM_THREADS=`threads`,
    or unset (train_net.py's own choice) when `threads` is None.
    """
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS=threads or "")
    if threads is None:
        del env["OMP_NUM_THREADS"]
    cmd = [sys.executable, os.path.join(REPO, "train_net.py")] + args
    return subprocess.Popen(cmd, cwd=REPO, env=env, text=True, **popen_kwargs)


def run_to_end(args, datasets_root, threads="1"):
    proc = run_train_net(
        args, datasets_root, threads, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, out, err


class LossRecorder(HookBase):
    def __init__(self):
        self.losses = []

    def after_step(self):
        self.losses.append(self.trainer.storage.history("total_loss").latest())


class TestTrainInProcess(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        write_ade20k_like(self.tmp.name)
        ade = os.path.join(self.tmp.name, "ADEChallengeData2016")
        self.names = ["_semask_tiny_train", "_semask_tiny_val"]
        for name, split in zip(self.names, ("training", "validation")):
            register_sem_seg_dataset(
                name,
                os.path.join(ade, "images", split),
                os.path.join(ade, "annotations_detectron2", split),
                stuff_classes=["background", "red", "green"],
            )

    def tearDown(self):
        for name in self.names:
            unregister(name)
        self.tmp.cleanup()

    def test_loss_goes_down_and_evaluation_returns_miou(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.merge_from_file(write_tiny_run_config(self.tmp.name))
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (self.names[0],), (self.names[1],)
        cfg.SOLVER.MAX_ITER = 30
        cfg.OUTPUT_DIR = os.path.join(self.tmp.name, "output")
        cfg.freeze()
        seed_all_rng(0)
        # One thread, as the subprocess runs (OMP_NUM_THREADS=1): on a busy 2-core machine,
        # two intra-op threads spend more time waiting on each other than computing.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.addCleanup(torch.set_num_threads, threads)
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        recorder = LossRecorder()
        trainer.register_hooks([recorder])
        trainer.train()

        losses = recorder.losses
        self.assertEqual(len(losses), 30)
        self.assertLess(np.mean(losses[-5:]), 0.8 * np.mean(losses[:5]), losses)
        miou = [m["sem_seg/mIoU"] for m in read_metrics(cfg.OUTPUT_DIR) if "sem_seg/mIoU" in m]
        self.assertEqual(len(miou), 1)
        self.assertTrue(0.0 <= miou[0] <= 100.0, miou)

        cfg = cfg.clone()
        cfg.defrost()
        cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE = (48, 80), 160
        results = train_net.Trainer.test_with_TTA(cfg, trainer.model)
        self.assertTrue(0.0 <= results["sem_seg_TTA"]["mIoU"] <= 100.0, results)


class TrainNetRunCase(unittest.TestCase):
    """A temporary folder with a tiny ADE20K-like dataset, the tiny config and an output folder."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.datasets = os.path.join(self.tmp.name, "datasets")
        write_ade20k_like(self.datasets)
        self.config = write_tiny_run_config(self.tmp.name)
        self.output = os.path.join(self.tmp.name, "output")

    def tearDown(self):
        self.tmp.cleanup()


class TestTrainNetSubprocess(TrainNetRunCase):

    def test_two_process_cpu_ddp(self):
        # As a user on a CPU machine runs a shipped recipe: device cuda, SyncBN, 4 loader
        # workers, no thread settings.
        args = ["--num-gpus", "2", "--dist-url", "auto", "--config-file", self.config]
        args += ["MODEL.DEVICE", "cuda", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN"]
        args += ["DATALOADER.NUM_WORKERS", "4", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", self.output]
        rc, out, err = run_to_end(args, self.datasets, threads=None)
        self.assertEqual(rc, 0, err[-3000:])
        self.assertTrue(any("sem_seg/mIoU" in m for m in read_metrics(self.output)))
        threads = cpu_threads_per_process(2)
        # Each rank logs its rank and the world size, then trains (rank 1 to its own file).
        for rank, log in ((0, "log.txt"), (1, "log.txt.rank1")):
            with open(os.path.join(self.output, log)) as f:
                text = f.read()
            self.assertIn(f"Rank of current process: {rank}. World size: 2", text)
            self.assertIn("Starting training from iteration 0", text)
            # The loader workers come from the command line: the user's choice stands.
            self.assertIn(f"CPU process {rank}: {threads} torch thread(s), 4 data-loader", text)
            self.assertIn("naiveSyncBN", text)

    def test_kill_and_resume(self):
        period = 4
        args = ["--config-file", self.config, "OUTPUT_DIR", self.output, "DATASETS.TEST", "()"]
        args += ["SOLVER.CHECKPOINT_PERIOD", str(period)]
        log_path = os.path.join(self.tmp.name, "killed_run.log")
        with open(log_path, "w") as log:
            proc = run_train_net(
                args + ["SOLVER.MAX_ITER", "100000"], self.datasets, stdout=log, stderr=log
            )
            try:
                # Kill once two checkpoints exist, wherever the run is (possibly mid-save).
                deadline = time.time() + SUBPROCESS_TIMEOUT
                while len(glob.glob(os.path.join(self.output, "model_*.pth"))) < 2:
                    if proc.poll() is not None or time.time() > deadline:
                        with open(log_path) as f:
                            self.fail("no two checkpoints before the kill:\n" + f.read()[-3000:])
                    time.sleep(0.05)
            finally:
                proc.kill()  # SIGKILL
                proc.wait()

        with open(os.path.join(self.output, "last_checkpoint")) as f:
            last = f.read().strip()
        saved = sorted(os.path.basename(p) for p in glob.glob(os.path.join(self.output, "*.pth")))
        # last_checkpoint names the newest complete checkpoint, so at most the iterations since
        # it (fewer than one period, else a newer one would exist) are lost.
        self.assertEqual(last, saved[-1])
        last_iter = torch.load(os.path.join(self.output, last), weights_only=False)["iteration"]
        self.assertEqual(last, f"model_{last_iter:07d}.pth")
        self.assertEqual((last_iter + 1) % period, 0)

        resume_args = ["--resume"] + args + ["SOLVER.MAX_ITER", str(last_iter + 1 + period)]
        rc, out, err = run_to_end(resume_args, self.datasets)
        self.assertEqual(rc, 0, err[-3000:])
        self.assertIn(f"Starting training from iteration {last_iter + 1}", out)
        self.assertTrue(os.path.isfile(os.path.join(self.output, "model_final.pth")))
        self.assertEqual(glob.glob(os.path.join(self.output, ".*.tmp")), [])

    def test_missing_dataset_is_a_one_line_error(self):
        missing = os.path.join(self.tmp.name, "no_datasets")
        rc, out, err = run_to_end(
            ["--config-file", self.config, "OUTPUT_DIR", self.output], missing
        )
        self.assertNotEqual(rc, 0)
        last_line = err.strip().splitlines()[-1]
        self.assertTrue(last_line.startswith("error: dataset 'ade20k_sem_seg_train'"), last_line)
        self.assertIn(f"folder not found: {missing}", last_line)
        self.assertNotIn("Traceback", out + err)


class TestAtomicCheckpointer(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.model = nn.Linear(3, 2)

    def tearDown(self):
        self.tmp.cleanup()

    def test_crash_during_save_keeps_last_checkpoint_loadable(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.tmp.name, save_to_disk=True)
        checkpointer.save("model_0000004", iteration=4)

        def partial_save(obj, f, *args, **kwargs):
            f.write(b"\x80\x02 half a checkpoint")
            raise OSError("disk full")

        with mock.patch("torch.save", side_effect=partial_save):
            with self.assertRaises(OSError):
                checkpointer.save("model_0000009", iteration=9)
        self.assertTrue(checkpointer.get_checkpoint_file().endswith("model_0000004.pth"))
        self.assertEqual(
            sorted(os.listdir(self.tmp.name)), ["last_checkpoint", "model_0000004.pth"]
        )
        extra = checkpointer.resume_or_load("", resume=True)
        self.assertEqual(extra["iteration"], 4)

    def test_crash_while_tagging_keeps_previous_tag(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.tmp.name, save_to_disk=True)
        checkpointer.save("model_0000004", iteration=4)
        real_replace = os.replace

        def fail_on_tag(src, dst):
            if os.path.basename(dst) == "last_checkpoint":
                raise KeyboardInterrupt
            real_replace(src, dst)

        with mock.patch("os.replace", side_effect=fail_on_tag):
            with self.assertRaises(KeyboardInterrupt):
                checkpointer.save("model_0000009", iteration=9)
        self.assertTrue(checkpointer.get_checkpoint_file().endswith("model_0000004.pth"))
        self.assertEqual(checkpointer.resume_or_load("", resume=True)["iteration"], 4)

    def test_stale_temp_files_are_removed(self):
        stale = os.path.join(self.tmp.name, ".model_0000009.pth.x1y2.tmp")
        other = os.path.join(self.tmp.name, ".notes.tmp")
        for path in (stale, other):
            open(path, "wb").close()
        AtomicDetectionCheckpointer(self.model, self.tmp.name, save_to_disk=True)
        self.assertFalse(os.path.exists(stale))
        self.assertTrue(os.path.exists(other))


class FailingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DatasetError("label x.png has 3 channels. Fix: save it as a single-channel PNG.")


class TestUserErrors(unittest.TestCase):
    MESSAGE = "label x.png has 3 channels. Fix: save it as a single-channel PNG."

    def test_direct(self):
        self.assertEqual(user_error_message(DatasetError(self.MESSAGE)), self.MESSAGE)

    def test_from_data_loader_worker(self):
        loader = torch.utils.data.DataLoader(FailingDataset(), num_workers=1)
        with self.assertRaises(DatasetError) as ctx:
            next(iter(loader))
        self.assertIn("Traceback", str(ctx.exception))
        self.assertEqual(user_error_message(ctx.exception), self.MESSAGE)

    def test_from_spawned_process(self):
        # What launch() re-raises when a rank fails: that rank's traceback as the message.
        trace = "Traceback (most recent call last):\n  ...\n"
        trace += f"semask_d2.data.errors.DatasetError: {self.MESSAGE}\n"
        error = torch.multiprocessing.ProcessRaisedException(trace, 1, 123)
        self.assertEqual(user_error_message(error), self.MESSAGE)
        other = torch.multiprocessing.ProcessRaisedException("Traceback\nKeyError: 'x'\n", 1, 123)
        self.assertIsNone(user_error_message(other))
        self.assertIsNone(user_error_message(RuntimeError(self.MESSAGE)))

    def test_training_loop_traceback_hidden_for_user_errors_only(self):
        hide_user_error_tracebacks()
        logger = logging.getLogger("detectron2.engine.train_loop")
        with self.assertLogs(logger, "ERROR") as logs:
            for exc in (DatasetError(self.MESSAGE), RuntimeError("a bug")):
                try:
                    raise exc
                except Exception:
                    logger.exception("Exception during training:")
        self.assertEqual([r.exc_info[0] for r in logs.records], [RuntimeError])

    def test_config_errors_exit_with_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            config = write_tiny_run_config(tmp)
            cases = [
                (["--config-file", os.path.join(tmp, "none.yaml")], "does not exist"),
                (["--config-file", config, "MODEL.NO_SUCH_KEY", "1"], "Non-existent key"),
                (["--config-file", config, "SOLVER.MAX_ITER", "many"], "Type mismatch"),
            ]
            for argv, expected in cases:
                with mock.patch.object(sys, "argv", ["train_net.py"] + argv):
                    with self.assertRaises(SystemExit) as ctx:
                        train_net.invoke_main()
                message = str(ctx.exception.code)
                self.assertTrue(message.startswith("error: "), message)
                self.assertIn(expected, message)
                self.assertNotIn("\n", message)
        self.assertTrue(issubclass(ConfigError, ValueError))


if __name__ == "__main__":
    unittest.main()

"""
The SeMask-Mask2Former quick start (``dev/quickstart.sh --mask2former``): its config merges and
builds the pinned model, trains one step on two images of the generated kind, infers at an odd
size, and works with ``tools/visualize_predictions.py``. The full config runs as is (a step
takes about a second on one CPU thread); only the visualization test uses tiny generated data.
"""

import os
import re
import unittest

import numpy as np
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config
from semask_d2.data.datasets import register_semask_shapes
from semask_d2.data.datasets.synthetic_shapes import SHAPES_CLASSES, render_sample
from semask_d2.modeling.meta_arch import SeMaskMaskFormer

from catalog_fixtures import CatalogTestCase
from script_loader import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart", "semask_mask2former_shapes.yaml")
NUM_CLASSES = len(SHAPES_CLASSES)
# Parameters of the quick-start model (6 classes), pinned.
PARAMS = 3_051_769
# Generated image side (pixels) and an odd inference size (height, width).
SIZE = 128
ODD = (61, 90)
TINY = {"m2ftinyval": 2}


def quickstart_cfg():
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(CONFIG)
    return cfg


def generated_inputs(num_images, size=SIZE, seed=0):
    """Images and labels drawn like semask_shapes, with per-class masks as the mapper emits."""
    inputs = []
    for i in range(num_images):
        image, label = render_sample(np.random.default_rng([seed, i]), size)
        sem_seg = torch.as_tensor(label.astype(np.int64))
        classes = torch.unique(sem_seg)
        classes = classes[classes != 255]
        instances = Instances((size, size))
        instances.gt_classes = classes
        instances.gt_masks = sem_seg[None] == classes[:, None, None]
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        inputs.append({"image": image, "sem_seg": sem_seg, "instances": instances})
    return inputs


class TestConfig(unittest.TestCase):
    def test_values(self):
        cfg = quickstart_cfg()
        self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "SeMaskMaskFormer")
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, NUM_CLASSES)
        self.assertEqual(cfg.DATASETS.TRAIN, ("semask_shapes_train",))
        self.assertEqual(cfg.DATASETS.TEST, ("semask_shapes_val",))
        self.assertEqual(cfg.MODEL.DEVICE, "cpu")
        self.assertEqual(cfg.MODEL.WEIGHTS, "")
        self.assertFalse(cfg.SOLVER.AMP.ENABLED)
        # Nothing is pretrained: the backbone learns at the full rate.
        self.assertEqual(cfg.SOLVER.BACKBONE_MULTIPLIER, 1.0)
        self.assertEqual(cfg.DATALOADER.NUM_WORKERS, 0)
        self.assertEqual(len(cfg.MODEL.SWIN.SEM_WINDOWED), 4)
        # GroupNorm with 32 groups in the pixel decoder: widths must be multiples of 32.
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NORM, "GN")
        head = cfg.MODEL.SEM_SEG_HEAD
        for width in (head.CONVS_DIM, head.MASK_DIM, cfg.MODEL.SWIN.EMBED_DIM):
            self.assertEqual(width % 32, 0)
        self.assertEqual(cfg.MODEL.MASK_FORMER.HIDDEN_DIM % cfg.MODEL.MASK_FORMER.NHEADS, 0)
        self.assertEqual(head.CONVS_DIM % head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS, 0)
        # 128-pixel images: windows tile the 32, 16, 8, 4 tokens of strides 4-32.
        for stride in (4, 8, 16, 32):
            self.assertEqual((SIZE // stride) % cfg.MODEL.SWIN.WINDOW_SIZE, 0)
        # Evaluated once, at the end; no intermediate checkpoint.
        self.assertIn(cfg.TEST.EVAL_PERIOD, (0, cfg.SOLVER.MAX_ITER))
        self.assertGreaterEqual(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER)
        self.assertTrue(cfg.SOLVER.CLIP_GRADIENTS.ENABLED)
        self.assertEqual(cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, "full_model")

    def test_quickstart_script_runs_this_config(self):
        with open(os.path.join(REPO, "dev", "quickstart.sh")) as f:
            script = f.read()
        block = re.search(r'"--mask2former" \]; then(.*?)\nfi\n', script, re.S)
        self.assertIsNotNone(block)
        self.assertIn("CONFIG=configs/quickstart/semask_mask2former_shapes.yaml", block[1])
        self.assertIn("OUT=./output/quickstart_mask2former", block[1])
        # Without the flag: the FPN quick start.
        self.assertIn("\nCONFIG=configs/quickstart/semask_fpn_shapes.yaml\n", script)


class TestModel(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.cfg = quickstart_cfg()
        self.model = build_model(self.cfg)

    def test_builds_the_pinned_model(self):
        self.assertIsInstance(self.model, SeMaskMaskFormer)
        self.assertEqual(sum(p.numel() for p in self.model.parameters()), PARAMS)
        self.assertIsNotNone(self.model.prior_loss)

    def test_training_steps_reach_every_parameter(self):
        mf = self.cfg.MODEL.MASK_FORMER
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        inputs = generated_inputs(2)
        self.model.train()
        # Two steps: the semantic attention branch (SEM_INIT "mmseg") starts with a zero
        # residual scale, so its other weights get their first gradient in the second step.
        for _ in range(2):
            optimizer.zero_grad()
            with EventStorage():
                losses = self.model(inputs)
            sum(losses.values()).backward()
            optimizer.step()
        # One prediction before the first decoder layer and one after each: DEC_LAYERS in all,
        # the last without a suffix.
        expected = {"loss_cate"} | {
            f"{name}{suffix}"
            for name in ("loss_ce", "loss_mask", "loss_dice")
            for suffix in [""] + [f"_{i}" for i in range(mf.DEC_LAYERS - 1)]
        }
        self.assertEqual(set(losses), expected)
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        no_grad = [
            k for k, p in self.model.named_parameters() if p.grad is None or not p.grad.any()
        ]
        self.assertEqual(no_grad, [])

    def test_inference_at_an_odd_size(self):
        image = generated_inputs(1)[0]["image"][:, : ODD[0], : ODD[1]]
        self.model.eval()
        with torch.no_grad():
            outputs = self.model(
                [{"image": image}, {"image": image, "height": 2 * ODD[0], "width": 2 * ODD[1]}]
            )
        self.assertEqual(outputs[0]["sem_seg"].shape, (NUM_CLASSES,) + ODD)
        self.assertEqual(outputs[1]["sem_seg"].shape, (NUM_CLASSES, 2 * ODD[0], 2 * ODD[1]))
        # Mask2Former semantic scores: sums over queries of class probability x mask sigmoid.
        self.assertTrue(all(torch.isfinite(o["sem_seg"]).all() for o in outputs))
        self.assertGreaterEqual(outputs[0]["sem_seg"].min().item(), 0.0)


class TestVisualizePredictions(CatalogTestCase):
    NAMES = [f"semask_shapes_{split}" for split in TINY]

    def test_draws_mask2former_predictions(self):
        register_semask_shapes(self.root, splits=TINY, image_size=48)
        torch.manual_seed(0)
        DetectionCheckpointer(build_model(quickstart_cfg()), save_dir=self.root).save("model_final")
        tool = load_script("tools/visualize_predictions.py")
        argv = ["--config-file", CONFIG, "--dataset", "semask_shapes_m2ftinyval"]
        written = tool.main(argv + ["--num-images", "2", "--scale", "1", "OUTPUT_DIR", self.root])
        self.assertEqual(written, os.path.join(self.root, "predictions.png"))
        with Image.open(written) as image:
            # 3 panels of 48 px with 2 gaps of 4; a title band of 16 over 2 rows with 1 gap.
            self.assertEqual(image.size, (3 * 48 + 2 * 4, 16 + 2 * 48 + 4))


if __name__ == "__main__":
    unittest.main()

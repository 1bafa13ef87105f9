"""Every YAML in configs/ merges and builds; SeMask-FPN recipes are pinned (official SeMask-FPN)."""

import glob
import os
import re
import unittest

import torch

from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config

from model_fixtures import shrink, training_inputs

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))
LEAF = re.compile(r"semask_fpn_swin_(tiny|small|base|large)_bs(\d+)_(\d+)k\.yaml")

# mmseg SeMask-FPN recipes per dataset folder.
RECIPES = {
    "ade20k": dict(
        classes=150,
        lr=1e-4,
        wd=1e-4,
        warmup=1e-6,
        batch=16,
        crop=512,
        large_crop=640,
        train="ade20k_sem_seg_train",
        test="ade20k_sem_seg_val",
    ),
    "cityscapes": dict(
        classes=19,
        lr=1e-3,
        wd=0.05,
        warmup=1e-5,
        batch=8,
        crop=768,
        large_crop=768,
        train="cityscapes_fine_sem_seg_train",
        test="cityscapes_fine_sem_seg_val",
    ),
    "coco-stuff-10k": dict(
        classes=171,
        lr=1e-4,
        wd=1e-4,
        warmup=1e-6,
        batch=16,
        crop=512,
        large_crop=640,
        train="coco_2017_train_stuff_10k_sem_seg",
        test="coco_2017_test_stuff_10k_sem_seg",
    ),
}
# embed_dim, depths, num_heads, window (= semantic window), pretraining size (official configs).
SIZES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7, 224),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384),
}
WEIGHTS = {
    "tiny": "swin_tiny_patch4_window7_224.pkl",
    "small": "swin_small_patch4_window7_224.pkl",
    "base": "swin_base_patch4_window12_384_22k.pkl",
    "large": "swin_large_patch4_window12_384_22k.pkl",
}
# Parameters of the full-size models, counted on the meta device. README: T 35M (Cityscapes
# 34M), S 56M, B 96M, L 211M.
PARAMS = {
    ("ade20k", "tiny"): 34_655_748,
    ("ade20k", "small"): 55_973_652,
    ("ade20k", "base"): 96_485_826,
    ("ade20k", "large"): 210_791_934,
    ("cityscapes", "tiny"): 34_243_753,
    ("cityscapes", "small"): 55_561_657,
    ("cityscapes", "base"): 95_948_071,
    ("cityscapes", "large"): 210_002_659,
    ("coco-stuff-10k", "tiny"): 34_721_793,
    ("coco-stuff-10k", "small"): 56_039_697,
    ("coco-stuff-10k", "base"): 96_572_031,
    ("coco-stuff-10k", "large"): 210_918_459,
}
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def load(path):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def leaves():
    """(path, dataset folder, size, batch in the name, thousands of iterations) per leaf."""
    found = []
    for path in ALL_CONFIGS:
        match = LEAF.fullmatch(os.path.basename(path))
        if match:
            dataset = os.path.relpath(path, CONFIG_DIR).split(os.sep)[0]
            found.append((path, dataset, match[1], int(match[2]), int(match[3])))
    return found


def mmseg_windowed(embed_dim, num_classes):
    """The mmseg SeMask-FPN rule (official ``semask_swin_transformer.py`` of SeMask-FPN)."""
    if embed_dim in (96, 192) and num_classes > 19:
        return [True, True, False, False]
    return [True] * 4


# Loss keys per meta-architecture, for the shrunk models (3 predictions: 2 auxiliary).
LOSS_KEYS = {
    "SeMaskSemanticSegmentor": {"loss_sem_seg", "loss_cate"},
    "SeMaskMaskFormer": {
        f"{name}{suffix}"
        for name in ("loss_ce", "loss_mask", "loss_dice")
        for suffix in ("", "_0", "_1")
    }
    | {"loss_cate"},
}


class TestConfigFiles(unittest.TestCase):
    def test_layout(self):
        self.assertEqual(len(leaves()), 12)
        self.assertEqual({(d, s) for _, d, s, _, _ in leaves()}, set(PARAMS))
        # Per dataset: the dataset base, then per architecture its base and four leaves
        # (FPN on three datasets, Mask2Former on ADE20K and Cityscapes).
        # configs/quickstart holds the built-in-dataset configs, tested with their dataset.
        recipes = [p for p in ALL_CONFIGS if os.sep + "quickstart" + os.sep not in p]
        self.assertEqual(len(recipes), 3 + 3 * 5 + 2 * 5)

    def test_every_file_merges_builds_and_trains_one_step(self):
        for path in ALL_CONFIGS:
            name = os.path.relpath(path, CONFIG_DIR)
            with self.subTest(config=name):
                cfg = load(path)
                arch = cfg.MODEL.META_ARCHITECTURE
                if arch not in LOSS_KEYS:
                    # Dataset bases only: they define no model.
                    self.assertTrue(os.path.basename(path).startswith("Base-"), name)
                    self.assertNotIn("semask_", name)
                    continue
                torch.manual_seed(0)
                model = build_model(shrink(cfg)).train()
                with EventStorage():
                    losses = model(training_inputs(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))
                self.assertEqual(set(losses), LOSS_KEYS[arch])
                self.assertTrue(all(torch.isfinite(v) for v in losses.values()), name)

    def test_recipes(self):
        for path, dataset, size, batch, kiters in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg = load(path)
                recipe = RECIPES[dataset]
                crop = recipe["large_crop"] if size == "large" else recipe["crop"]
                self.assertEqual(batch, recipe["batch"])
                self.assertEqual(cfg.SOLVER.IMS_PER_BATCH, batch)
                self.assertEqual(cfg.SOLVER.MAX_ITER, kiters * 1000)
                self.assertEqual(cfg.SOLVER.MAX_ITER, 80000)
                self.assertEqual(cfg.SOLVER.OPTIMIZER, "ADAMW")
                self.assertAlmostEqual(cfg.SOLVER.BASE_LR, recipe["lr"])
                self.assertAlmostEqual(cfg.SOLVER.WEIGHT_DECAY, recipe["wd"])
                self.assertEqual(cfg.SOLVER.WEIGHT_DECAY_NORM, 0.0)
                self.assertEqual(cfg.SOLVER.BACKBONE_MULTIPLIER, 1.0)
                self.assertEqual(cfg.SOLVER.LR_SCHEDULER_NAME, "WarmupPolyLR")
                self.assertEqual(cfg.SOLVER.WARMUP_METHOD, "linear")
                self.assertEqual(cfg.SOLVER.WARMUP_ITERS, 1500)
                self.assertAlmostEqual(cfg.SOLVER.WARMUP_FACTOR, recipe["warmup"])
                self.assertEqual(cfg.SOLVER.POLY_LR_POWER, 1.0)
                self.assertEqual(cfg.SOLVER.POLY_LR_CONSTANT_ENDING, 0.0)
                self.assertEqual(cfg.DATASETS.TRAIN, (recipe["train"],))
                self.assertEqual(cfg.DATASETS.TEST, (recipe["test"],))
                self.assertEqual(cfg.INPUT.CROP.SIZE, [crop, crop])
                self.assertEqual(cfg.INPUT.SIZE_DIVISIBILITY, crop)
                self.assertTrue(cfg.INPUT.COLOR_AUG_SSD)
                self.assertEqual(cfg.INPUT.DATASET_MAPPER_NAME, "mask_former_semantic")
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, recipe["classes"])
                self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "SeMaskSemanticSegmentor")
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NAME, "SeMaskFPNHead")
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, 256)
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.DROPOUT, 0.1)
                self.assertEqual(cfg.MODEL.SEMASK.PRIOR_CONVENTION, "mmseg")
                self.assertEqual(cfg.MODEL.SWIN.SEM_INIT, "mmseg")
                self.assertEqual(cfg.MODEL.MASK_FORMER.CATE_WEIGHT, 0.4)

    def test_sizes_and_windowed_lists(self):
        for path, dataset, size, _, _ in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg = load(path)
                swin = cfg.MODEL.SWIN
                embed_dim, depths, heads, window, pretrain = SIZES[size]
                self.assertEqual(swin.EMBED_DIM, embed_dim)
                self.assertEqual(swin.DEPTHS, depths)
                self.assertEqual(swin.NUM_HEADS, heads)
                self.assertEqual(swin.WINDOW_SIZE, window)
                self.assertEqual(swin.SEM_WINDOW_SIZE, window)
                self.assertEqual(swin.PRETRAIN_IMG_SIZE, pretrain)
                self.assertEqual(swin.DROP_PATH_RATE, 0.3)
                self.assertEqual(cfg.MODEL.WEIGHTS, WEIGHTS[size])
                classes = RECIPES[dataset]["classes"]
                self.assertEqual(swin.SEM_WINDOWED, mmseg_windowed(embed_dim, classes))

    def test_resize_and_test_scales(self):
        for path, dataset, size, _, _ in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg = load(path)
                if dataset == "cityscapes":
                    # Ratio 0.5-2.0 of 1024 as a choice list; whole 2048x1024 test images.
                    self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN[0], 512)
                    self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN[-1], 2048)
                    self.assertEqual(len(cfg.INPUT.MIN_SIZE_TRAIN), 16)
                    scale, long_side, max_area = 1024, 2048, 0.75
                else:
                    scale = 640 if size == "large" else 512
                    long_side = 4 * scale
                    max_area = 0.75 if size == "tiny" else 1.0
                    sizes = [int(r * scale) for r in RATIOS]
                    self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN, tuple(sizes))
                    self.assertEqual(cfg.INPUT.MAX_SIZE_TRAIN, int(1.75 * long_side))
                self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, "choice")
                self.assertEqual(cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, max_area)
                self.assertEqual(cfg.INPUT.MIN_SIZE_TEST, scale)
                self.assertEqual(cfg.INPUT.MAX_SIZE_TEST, long_side)
                self.assertEqual(cfg.TEST.AUG.MIN_SIZES, tuple(int(r * scale) for r in RATIOS))
                self.assertEqual(cfg.TEST.AUG.MAX_SIZE, int(1.75 * long_side))
                self.assertTrue(cfg.TEST.AUG.FLIP)
                self.assertEqual(cfg.TEST.EVAL_PERIOD, 8000)

    def test_parameter_counts(self):
        for path, dataset, size, _, _ in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg = load(path)
                # Shapes only: full-size models built without allocating weights.
                with torch.device("meta"):
                    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
                count = sum(p.numel() for p in model.parameters())
                self.assertEqual(count, PARAMS[(dataset, size)])


if __name__ == "__main__":
    unittest.main()

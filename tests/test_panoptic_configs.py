"""
The SeMask-Mask2Former panoptic and instance configs (``configs/<dataset>/{panoptic,instance}-
segmentation/semask_mask2former``): four backbone sizes per dataset and task, each merging and
building at full size, naming registered datasets, a registered mapper and the evaluation
flags of its task, with Mask2Former's published recipe and the model of our semantic
SeMask-Mask2Former configs.
"""

import glob
import os
import unittest

import torch
import yaml

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

import semask_d2  # noqa: F401  (registers the datasets and mappers)
from semask_d2 import add_semask_config
from semask_d2.data.build import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from semask_d2.data.dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
)
from semask_d2.evaluation.build import EVALUATOR_BUILDERS, PANOPTIC_EVALUATORS

from model_fixtures import CONFIG_DIR, flat_config

# Mask2Former's training sizes, as its configs write them: short side int(x * 0.1 * s) for x in
# 5..20, s = 640 (ADE20K) or 1024 (Cityscapes).
ADE20K_TRAIN_SIZES = [int(x * 0.1 * 640) for x in range(5, 21)]
CITYSCAPES_TRAIN_SIZES = [int(x * 0.1 * 1024) for x in range(5, 21)]

# Short-side resize and crop: (MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, CROP.SIZE, SIZE_DIVISIBILITY).
ADE20K_CROP = (ADE20K_TRAIN_SIZES, 2560, [640, 640], 640)
CITYSCAPES_CROP = (CITYSCAPES_TRAIN_SIZES, 4096, [512, 1024], -1)
# Test sizes and the (disabled) multi-scale test: (MIN_SIZE_TEST, MAX_SIZE_TEST, AUG.MIN_SIZES,
# AUG.MAX_SIZE); COCO configures no multi-scale test, detectron2's defaults stay.
ADE20K_TEST = (640, 2560, (320, 480, 640, 800, 960, 1120), 4480)
CITYSCAPES_TEST = (1024, 2048, (512, 768, 1024, 1280, 1536, 1792), 4096)
COCO_TEST = (800, 1333, (400, 500, 600, 700, 800, 900, 1000, 1100, 1200), 4000)

# Mask2Former's recipes per (dataset, task): facebookresearch/Mask2Former
# configs/<dataset>/<task>-segmentation/Base-*.yaml and maskformer2_R50_bs16_*.yaml (datasets,
# classes, schedule, mapper, sizes, TEST flags), whose swin/*.yaml change only the backbone,
# its weights, the queries (Swin-L 200) and, for COCO Swin-L, the schedule (100 epochs).
# `things`: thing classes of the training set (contiguous ids); `crop` None: LSJ mappers.
RECIPES = {
    ("ade20k", "panoptic"): dict(
        train="ade20k_panoptic_train",
        test="ade20k_panoptic_val",
        evaluator="ade20k_panoptic_seg",
        classes=150,
        things=100,
        mapper=("mask_former_panoptic", MaskFormerPanopticDatasetMapper),
        flags=(True, True, True),
        iters="160k",
        crop=ADE20K_CROP,
        test_sizes=ADE20K_TEST,
    ),
    ("ade20k", "instance"): dict(
        train="ade20k_instance_train",
        test="ade20k_instance_val",
        evaluator="coco",
        classes=100,
        things=100,
        mapper=("mask_former_instance", MaskFormerInstanceDatasetMapper),
        # Mask2Former's ADE20K instance recipe turns all three on; only mask AP is evaluated.
        flags=(True, True, True),
        iters="160k",
        crop=ADE20K_CROP,
        test_sizes=ADE20K_TEST,
    ),
    ("cityscapes", "panoptic"): dict(
        train="cityscapes_fine_panoptic_train",
        test="cityscapes_fine_panoptic_val",
        evaluator="cityscapes_panoptic_seg",
        classes=19,
        things=8,
        mapper=("mask_former_panoptic", MaskFormerPanopticDatasetMapper),
        flags=(True, True, True),
        iters="90k",
        crop=CITYSCAPES_CROP,
        test_sizes=CITYSCAPES_TEST,
    ),
    ("cityscapes", "instance"): dict(
        train="cityscapes_fine_instance_seg_train",
        test="cityscapes_fine_instance_seg_val",
        evaluator="cityscapes_instance",
        classes=8,
        # detectron2's Cityscapes instance metadata has no thing id map.
        things=0,
        mapper=("mask_former_instance", MaskFormerInstanceDatasetMapper),
        flags=(False, True, False),
        iters="90k",
        crop=CITYSCAPES_CROP,
        test_sizes=CITYSCAPES_TEST,
    ),
    ("coco", "panoptic"): dict(
        train="coco_2017_train_panoptic",
        test="coco_2017_val_panoptic_with_sem_seg",
        evaluator="coco_panoptic_seg",
        classes=133,
        things=80,
        mapper=("coco_panoptic_lsj", COCOPanopticLSJDatasetMapper),
        flags=(True, True, True),
        iters="50ep",
        crop=None,
        test_sizes=COCO_TEST,
    ),
    ("coco", "instance"): dict(
        train="coco_2017_train",
        test="coco_2017_val",
        evaluator="coco",
        classes=80,
        things=80,
        mapper=("coco_instance_lsj", COCOInstanceLSJDatasetMapper),
        flags=(False, True, False),
        iters="50ep",
        crop=None,
        test_sizes=COCO_TEST,
    ),
}
# Poly schedules: (MAX_ITER, STEPS) of the name's iterations (STEPS unused).
POLY = {"160k": 160000, "90k": 90000}
# COCO multi-step schedules, (MAX_ITER, STEPS): 50 epochs (Swin-L: 100), lr x 0.1 at about
# 0.889 and 0.963 of MAX_ITER.
MULTI_STEP = {"50ep": (368750, (327778, 355092)), "100ep": (737500, (655556, 710184))}

# Backbone per size: file name part, embed_dim, depths, num_heads, window (= semantic window),
# pretraining size, converted ImageNet weights, queries.
SIZES = {
    "tiny": (
        "swin_tiny",
        96,
        [2, 2, 6, 2],
        [3, 6, 12, 24],
        7,
        224,
        "swin_tiny_patch4_window7_224.pkl",
        100,
    ),
    "small": (
        "swin_small",
        96,
        [2, 2, 18, 2],
        [3, 6, 12, 24],
        7,
        224,
        "swin_small_patch4_window7_224.pkl",
        100,
    ),
    "base": (
        "swin_base_IN21k_384",
        128,
        [2, 2, 18, 2],
        [4, 8, 16, 32],
        12,
        384,
        "swin_base_patch4_window12_384_22k.pkl",
        100,
    ),
    "large": (
        "swin_large_IN21k_384",
        192,
        [2, 2, 18, 2],
        [6, 12, 24, 48],
        12,
        384,
        "swin_large_patch4_window12_384_22k.pkl",
        200,
    ),
}
# The semantic SeMask-Mask2Former leaves whose model the new leaves share.
SEMANTIC_LEAVES = os.path.join(
    CONFIG_DIR, "ade20k", "semantic-segmentation", "semask_mask2former", "maskformer2_semask_{}_*"
)
# Model keys that belong to the dataset or task rather than to the model.
TASK_KEYS = {
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON",
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
    "MODEL.SWIN.SEM_WINDOWED",
}


def load(path):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def leaf_name(dataset, task, size):
    """The leaf's path: Mask2Former's file name with "semask_" after "maskformer2_"."""
    iters = RECIPES[(dataset, task)]["iters"]
    if dataset == "coco" and size == "large":
        iters = "100ep"
    return os.path.join(
        CONFIG_DIR,
        dataset,
        f"{task}-segmentation",
        "semask_mask2former",
        f"maskformer2_semask_{SIZES[size][0]}_bs16_{iters}.yaml",
    )


def leaves():
    """(path, dataset, task, size) of every expected leaf."""
    return [
        (leaf_name(dataset, task, size), dataset, task, size)
        for dataset, task in RECIPES
        for size in SIZES
    ]


def official_windowed(num_classes):
    """The official detectron2 SeMask rule: the last stage global with 150 classes."""
    return [True, True, True, num_classes != 150]


def build_full_size(cfg):
    """The leaf's model at full size, shapes only (meta device: no weights allocated)."""
    with torch.device("meta"):
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


class TestPanopticInstanceConfigs(unittest.TestCase):
    def test_each_dataset_and_task_has_the_four_sizes(self):
        for dataset, task in RECIPES:
            folder = os.path.join(CONFIG_DIR, dataset, f"{task}-segmentation", "semask_mask2former")
            found = sorted(glob.glob(os.path.join(folder, "maskformer2_*.yaml")))
            expected = sorted(leaf_name(dataset, task, size) for size in SIZES)
            self.assertEqual(found, expected)

    def test_datasets_mapper_and_evaluation_flags(self):
        registered = set(DatasetCatalog.list())
        for path, dataset, task, _ in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg, recipe = load(path), RECIPES[(dataset, task)]
                self.assertEqual(cfg.DATASETS.TRAIN, (recipe["train"],))
                self.assertEqual(cfg.DATASETS.TEST, (recipe["test"],))
                self.assertLessEqual({recipe["train"], recipe["test"]}, registered)
                evaluator_type = MetadataCatalog.get(recipe["test"]).evaluator_type
                self.assertEqual(evaluator_type, recipe["evaluator"])
                self.assertIn(evaluator_type, EVALUATOR_BUILDERS)
                flags = cfg.MODEL.MASK_FORMER.TEST
                on = (flags.SEMANTIC_ON, flags.INSTANCE_ON, flags.PANOPTIC_ON)
                self.assertEqual(on, recipe["flags"])
                if evaluator_type in PANOPTIC_EVALUATORS:
                    # Every output the model returns has its evaluator.
                    evaluated = {flag for flag, _ in PANOPTIC_EVALUATORS[evaluator_type]}
                    self.assertEqual(evaluated, {"SEMANTIC_ON", "INSTANCE_ON", "PANOPTIC_ON"})
                name, mapper_class = recipe["mapper"]
                self.assertEqual(cfg.INPUT.DATASET_MAPPER_NAME, name)
                self.assertIn(name, DATASET_MAPPER_REGISTRY)
                self.assertIsInstance(build_dataset_mapper(cfg, is_train=True), mapper_class)
                self.assertTrue(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)

    def test_solver_recipe(self):
        for path, dataset, task, size in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg = load(path)
                solver = cfg.SOLVER
                self.assertEqual(solver.IMS_PER_BATCH, 16)
                self.assertEqual(solver.OPTIMIZER, "ADAMW")
                self.assertEqual(solver.BASE_LR, 1e-4)
                self.assertEqual(solver.WEIGHT_DECAY, 0.05)
                self.assertEqual(solver.WEIGHT_DECAY_NORM, 0.0)
                self.assertEqual(solver.WEIGHT_DECAY_EMBED, 0.0)
                self.assertEqual(solver.BACKBONE_MULTIPLIER, 0.1)
                clip = solver.CLIP_GRADIENTS
                self.assertEqual(
                    (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE),
                    (True, "full_model", 0.01, 2.0),
                )
                self.assertTrue(solver.AMP.ENABLED)
                self.assertEqual(solver.WARMUP_FACTOR, 1.0)
                self.assertEqual(cfg.TEST.EVAL_PERIOD, 5000)
                self.assertEqual(cfg.DATALOADER.NUM_WORKERS, 4)
                iters = os.path.splitext(path)[0].rsplit("_", 1)[1]
                if dataset == "coco":
                    self.assertEqual(iters, "100ep" if size == "large" else "50ep")
                    max_iter, steps = MULTI_STEP[iters]
                    self.assertEqual(solver.LR_SCHEDULER_NAME, "WarmupMultiStepLR")
                    self.assertEqual(solver.MAX_ITER, max_iter)
                    self.assertEqual(solver.STEPS, steps)
                    self.assertAlmostEqual(steps[0] / max_iter, 0.889, places=3)
                    self.assertAlmostEqual(steps[1] / max_iter, 0.963, places=3)
                    self.assertEqual(solver.GAMMA, 0.1)
                    self.assertEqual(solver.WARMUP_ITERS, 10)
                else:
                    self.assertEqual(solver.LR_SCHEDULER_NAME, "WarmupPolyLR")
                    self.assertEqual(solver.MAX_ITER, POLY[iters])
                    self.assertEqual(solver.POLY_LR_POWER, 0.9)
                    self.assertEqual(solver.POLY_LR_CONSTANT_ENDING, 0.0)
                    self.assertEqual(solver.WARMUP_ITERS, 0)

    def test_input_recipe(self):
        for path, dataset, task, _ in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg, recipe = load(path), RECIPES[(dataset, task)]
                self.assertEqual(cfg.INPUT.FORMAT, "RGB")
                if recipe["crop"] is None:
                    # Large-scale jitter of 1024 x 1024, scales 0.1-2.0, horizontal flips.
                    self.assertEqual(cfg.INPUT.IMAGE_SIZE, 1024)
                    self.assertEqual((cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE), (0.1, 2.0))
                    self.assertEqual(cfg.INPUT.RANDOM_FLIP, "horizontal")
                else:
                    sizes, max_size, crop, divisibility = recipe["crop"]
                    self.assertEqual(list(cfg.INPUT.MIN_SIZE_TRAIN), sizes)
                    self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, "choice")
                    self.assertEqual(cfg.INPUT.MAX_SIZE_TRAIN, max_size)
                    self.assertTrue(cfg.INPUT.CROP.ENABLED)
                    self.assertEqual(cfg.INPUT.CROP.TYPE, "absolute")
                    self.assertEqual(list(cfg.INPUT.CROP.SIZE), crop)
                    self.assertEqual(cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, 1.0)
                    self.assertTrue(cfg.INPUT.COLOR_AUG_SSD)
                    self.assertEqual(cfg.INPUT.SIZE_DIVISIBILITY, divisibility)
                min_test, max_test, aug_sizes, aug_max = recipe["test_sizes"]
                self.assertEqual(
                    (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST), (min_test, max_test)
                )
                self.assertFalse(cfg.TEST.AUG.ENABLED)
                self.assertEqual(tuple(cfg.TEST.AUG.MIN_SIZES), aug_sizes)
                self.assertEqual(cfg.TEST.AUG.MAX_SIZE, aug_max)

    def test_backbone_and_model(self):
        for path, dataset, task, size in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                cfg, recipe = load(path), RECIPES[(dataset, task)]
                _, embed_dim, depths, heads, window, pretrain, weights, queries = SIZES[size]
                swin = cfg.MODEL.SWIN
                self.assertEqual(
                    (swin.EMBED_DIM, swin.DEPTHS, swin.NUM_HEADS, swin.WINDOW_SIZE),
                    (embed_dim, depths, heads, window),
                )
                self.assertEqual((swin.SEM_WINDOW_SIZE, swin.PRETRAIN_IMG_SIZE), (window, pretrain))
                self.assertEqual(cfg.MODEL.WEIGHTS, weights)
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, recipe["classes"])
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, 255)
                # Stated in the leaf itself, by the official rule.
                with open(path) as f:
                    stated = yaml.safe_load(f)["MODEL"]["SWIN"]["SEM_WINDOWED"]
                self.assertEqual(stated, official_windowed(recipe["classes"]))

                model = build_full_size(cfg)
                self.assertEqual(
                    [stage.semantic_layer.windowed for stage in model.backbone.layers],
                    official_windowed(recipe["classes"]),
                )
                self.assertEqual(model.backbone.num_classes, recipe["classes"])
                predictor = model.sem_seg_head.predictor
                self.assertEqual(predictor.query_feat.num_embeddings, queries)
                self.assertEqual(predictor.class_embed.out_features, recipe["classes"] + 1)
                # 9 decoder layers: DEC_LAYERS 10 counts the prediction before the first.
                self.assertEqual(predictor.num_layers, 9)
                self.assertEqual(len(model.thing_ids), recipe["things"])
                self.assertEqual(model.test_topk_per_image, 100)
                self.assertEqual((model.object_mask_threshold, model.overlap_threshold), (0.8, 0.8))
                self.assertEqual(
                    {
                        k: model.criterion.weight_dict[k]
                        for k in ("loss_ce", "loss_mask", "loss_dice")
                    },
                    {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
                )

    def test_cityscapes_panoptic_things_are_train_ids_11_to_18(self):
        cfg = load(leaf_name("cityscapes", "panoptic", "tiny"))
        self.assertEqual(sorted(build_full_size(cfg).thing_ids), list(range(11, 19)))

    def test_model_keys_are_those_of_the_semantic_configs(self):
        for path, _, _, size in leaves():
            with self.subTest(config=os.path.relpath(path, CONFIG_DIR)):
                (semantic,) = glob.glob(SEMANTIC_LEAVES.format(SIZES[size][0]))
                ours = flat_config(load(path).MODEL, "MODEL.")
                theirs = flat_config(load(semantic).MODEL, "MODEL.")
                differ = sorted(k for k in ours if k not in TASK_KEYS and ours[k] != theirs[k])
                self.assertEqual(differ, [])

    def test_ade20k_panoptic_parameters_are_the_semantic_models_plus_queries(self):
        # Same 150 classes and windowed stages as ADE20K-150: only the queries add parameters,
        # a 256-wide feature and a 256-wide positional embedding each.
        for size in SIZES:
            with self.subTest(size=size):
                (semantic,) = glob.glob(SEMANTIC_LEAVES.format(SIZES[size][0]))
                counts = [
                    sum(p.numel() for p in build_full_size(load(path)).parameters())
                    for path in (leaf_name("ade20k", "panoptic", size), semantic)
                ]
                self.assertEqual(counts[0] - counts[1], (SIZES[size][7] - 100) * 2 * 256)


if __name__ == "__main__":
    unittest.main()

"""SeMask optimizer groups, full-model gradient clipping and the warmup + poly schedule."""

import math
import unittest

import torch
from torch import nn

from detectron2.config import get_cfg

from semask_d2 import add_semask_config
from semask_d2.solver import build_lr_scheduler, build_optimizer

BASE_LR, WEIGHT_DECAY, MULTIPLIER, WD_EMBED = 0.01, 0.05, 0.1, 0.0


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 4, 1)
        self.norm = nn.LayerNorm(4)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Linear(4, 3)
        self.head_norm = nn.GroupNorm(2, 4)
        self.query_embed = nn.Embedding(5, 4)
        # "backbone" as a substring but not as the path prefix: no multiplier.
        self.pre_backbone_proj = nn.Linear(2, 2)


def solver_cfg(**solver):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.WEIGHT_DECAY = WEIGHT_DECAY
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = MULTIPLIER
    cfg.SOLVER.WEIGHT_DECAY_EMBED = WD_EMBED
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def hyper_params_by_name(model, optimizer):
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {
        n: (group_of[id(p)]["lr"], group_of[id(p)]["weight_decay"])
        for n, p in model.named_parameters()
    }


class TestParamGroups(unittest.TestCase):
    def test_lr_and_weight_decay_per_parameter(self):
        model = TinyModel()
        optimizer = build_optimizer(solver_cfg(), model)
        self.assertIsInstance(optimizer, torch.optim.AdamW)
        backbone_lr = BASE_LR * MULTIPLIER
        expected = {
            "backbone.patch_embed.weight": (backbone_lr, WEIGHT_DECAY),
            "backbone.patch_embed.bias": (backbone_lr, WEIGHT_DECAY),
            "backbone.norm.weight": (backbone_lr, 0.0),
            "backbone.norm.bias": (backbone_lr, 0.0),
            "backbone.relative_position_bias_table": (backbone_lr, 0.0),
            "backbone.absolute_pos_embed": (backbone_lr, 0.0),
            "head.weight": (BASE_LR, WEIGHT_DECAY),
            "head.bias": (BASE_LR, WEIGHT_DECAY),
            "head_norm.weight": (BASE_LR, 0.0),
            "head_norm.bias": (BASE_LR, 0.0),
            "query_embed.weight": (BASE_LR, WD_EMBED),
            "pre_backbone_proj.weight": (BASE_LR, WEIGHT_DECAY),
            "pre_backbone_proj.bias": (BASE_LR, WEIGHT_DECAY),
        }
        got = hyper_params_by_name(model, optimizer)
        self.assertEqual(got.keys(), expected.keys())
        for name, (lr, wd) in expected.items():
            self.assertAlmostEqual(got[name][0], lr, places=12, msg=name)
            self.assertEqual(got[name][1], wd, name)
        # Groups are merged: one per distinct (lr, weight decay), each parameter once.
        self.assertEqual(len(optimizer.param_groups), len(set(expected.values())))
        self.assertEqual(sum(len(g["params"]) for g in optimizer.param_groups), len(expected))

    def test_embedding_weight_decay_is_configurable(self):
        model = TinyModel()
        optimizer = build_optimizer(solver_cfg(WEIGHT_DECAY_EMBED=0.3), model)
        self.assertEqual(hyper_params_by_name(model, optimizer)["query_embed.weight"][1], 0.3)

    def test_sgd(self):
        optimizer = build_optimizer(solver_cfg(OPTIMIZER="SGD", MOMENTUM=0.8), TinyModel())
        self.assertIsInstance(optimizer, torch.optim.SGD)
        self.assertEqual(optimizer.param_groups[0]["momentum"], 0.8)

    def test_unknown_optimizer(self):
        with self.assertRaisesRegex(ValueError, "SOLVER.OPTIMIZER"):
            build_optimizer(solver_cfg(OPTIMIZER="LAMB"), TinyModel())


class TestGradientClipping(unittest.TestCase):
    def clipped_grads(self, clip_type, clip_value, grads):
        """Set `grads` (name -> value filling the parameter) and run one zero-lr step."""
        cfg = solver_cfg(BASE_LR=0.0)
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
        model = TinyModel()
        params = dict(model.named_parameters())
        optimizer = build_optimizer(cfg, model)
        for name, value in grads.items():
            params[name].grad = torch.full_like(params[name], value)
        optimizer.step()
        return {name: params[name].grad for name in grads}

    def test_full_model_norm_is_clipped_to_clip_value(self):
        # Two parameters in different groups (backbone and head): 4 x 3.0 and 3 x 4.0.
        grads = {"backbone.patch_embed.bias": 3.0, "head.bias": 4.0}
        total = math.sqrt(4 * 3.0**2 + 3 * 4.0**2)  # 8.0
        out = self.clipped_grads("full_model", 0.5, grads)
        norm = torch.cat([g.flatten() for g in out.values()]).norm().item()
        self.assertAlmostEqual(norm, 0.5, places=5)
        # One scale for the whole model, so the direction is kept.
        scale = 0.5 / total
        self.assertTrue(
            torch.allclose(out["backbone.patch_embed.bias"], torch.full((4,), 3 * scale))
        )
        self.assertTrue(torch.allclose(out["head.bias"], torch.full((3,), 4 * scale)))

    def test_full_model_norm_below_clip_value_is_unchanged(self):
        out = self.clipped_grads("full_model", 10.0, {"head.bias": 4.0})
        self.assertTrue(torch.equal(out["head.bias"], torch.full((3,), 4.0)))

    def test_value_clipping_delegates_to_detectron2(self):
        # detectron2's per-parameter clippers fail on parameters without a gradient under
        # PyTorch 2.13, so every parameter gets one here, as in a real training step.
        grads = {name: 0.25 for name, _ in TinyModel().named_parameters()}
        grads.update({"head.bias": 4.0, "backbone.norm.bias": -2.0})
        out = self.clipped_grads("value", 0.5, grads)
        self.assertTrue(torch.equal(out["head.bias"], torch.full((3,), 0.5)))
        self.assertTrue(torch.equal(out["backbone.norm.bias"], torch.full((4,), -0.5)))
        self.assertTrue(torch.equal(out["head.weight"], torch.full((3, 4), 0.25)))


class TestPolySchedule(unittest.TestCase):
    def test_warmup_then_poly(self):
        cfg = solver_cfg(
            LR_SCHEDULER_NAME="WarmupPolyLR",
            MAX_ITER=100,
            WARMUP_ITERS=10,
            WARMUP_FACTOR=0.1,
            WARMUP_METHOD="linear",
            POLY_LR_POWER=0.9,
            POLY_LR_CONSTANT_ENDING=0.0,
        )
        optimizer = build_optimizer(cfg, TinyModel())
        scheduler = build_lr_scheduler(cfg, optimizer)
        lrs = []  # (head lr, backbone lr) at each iteration, as the LRScheduler hook sets them
        for _ in range(100):
            by_lr = sorted(g["lr"] for g in optimizer.param_groups)
            lrs.append((by_lr[-1], by_lr[0]))
            optimizer.step()
            scheduler.step()
        # Warmup factor 0.1 * (1 - it / 10) + it / 10, times (1 - it / 100) ** 0.9.
        expected = {
            0: 0.01 * 0.1,
            5: 0.01 * (0.1 * 0.5 + 0.5) * 0.95**0.9,
            10: 0.01 * 0.9**0.9,
            50: 0.01 * 0.5**0.9,
            99: 0.01 * 0.01**0.9,
        }
        for it, lr in expected.items():
            self.assertAlmostEqual(lrs[it][0], lr, places=12, msg=f"iteration {it}")
            self.assertAlmostEqual(lrs[it][1], lr * MULTIPLIER, places=12, msg=f"iteration {it}")


if __name__ == "__main__":
    unittest.main()

"""Behaviour of the SeMask Swin backbone: shapes, config, key layout, init modes, state."""

import unittest

import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from semask_d2 import add_semask_config
from semask_d2.modeling.backbone import SWIN_SIZES, D2SeMaskSwinTransformer
from semask_d2.modeling.semantic_prior import SemanticPriorLoss

from model_fixtures import official_keys

TINY = dict(embed_dim=16, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=3, num_classes=5)
FEATURES = ["res2", "res3", "res4", "res5"]
PRIORS = [f"{f}_prior" for f in FEATURES]


def tiny_backbone(**overrides):
    kwargs = dict(TINY, sem_window_size=3, drop_path_rate=0.0)
    kwargs.update(overrides)
    return D2SeMaskSwinTransformer(**kwargs)


def semantic_params(model, names=("mlp_cls_q", "mlp_cls_k", "mlp_v", "mlp_res", "gamma", "norm1")):
    return {
        k: p
        for k, p in model.named_parameters()
        if "semantic_layer" in k and any(n in k for n in names)
    }


class TestSeMaskSwinShapes(unittest.TestCase):
    def test_output_shape_matches_forward(self):
        torch.manual_seed(0)
        model = tiny_backbone().eval()
        for h, w in [(64, 64), (45, 71), (7, 5)]:
            with torch.no_grad():
                out = model(torch.randn(2, 3, h, w))
            shapes = model.output_shape()
            self.assertEqual(sorted(out), sorted(FEATURES + PRIORS))
            self.assertEqual(sorted(shapes), sorted(out))
            for name, tensor in out.items():
                stride = shapes[name].stride
                expected = (2, shapes[name].channels, -(-h // stride), -(-w // stride))
                self.assertEqual(tuple(tensor.shape), expected, name)
        self.assertEqual(shapes["res4"], ShapeSpec(channels=64, stride=16))
        self.assertEqual(shapes["res5_prior"], ShapeSpec(channels=5, stride=32))

    def test_out_features_subset(self):
        model = tiny_backbone(out_features=["res3", "res5"]).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 32, 32))
        self.assertEqual(sorted(out), sorted(["res3", "res5"] + PRIORS))
        self.assertFalse(
            any(k.startswith("norm0") or k.startswith("norm2") for k in model.state_dict())
        )
        with self.assertRaisesRegex(ValueError, "res6"):
            tiny_backbone(out_features=["res6"])

    def test_no_semantic_blocks_is_plain_swin(self):
        model = tiny_backbone(num_sem_blocks=0).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 40, 40))
        self.assertEqual(sorted(out), FEATURES)
        self.assertEqual(sorted(model.output_shape()), FEATURES)
        self.assertFalse(any("semantic_layer" in k for k in model.state_dict()))

    def test_no_spatial_state_between_calls(self):
        torch.manual_seed(0)
        model = tiny_backbone().eval()
        a, b = torch.randn(1, 3, 64, 48), torch.randn(1, 3, 37, 90)
        with torch.no_grad():
            first = model(a)
            model(b)
            again = model(a)
        for k in first:
            self.assertTrue(torch.equal(first[k], again[k]), k)

    def test_same_output_with_and_without_autograd(self):
        # Without autograd the MLP activation runs in place and the products run on oneDNN
        # (float rounding apart); padded windows read the qkv bias at their padding tokens
        # either way (45x71 pads every stage).
        torch.manual_seed(0)
        model = tiny_backbone().eval()
        x = torch.randn(1, 3, 45, 71)
        with torch.no_grad():
            plain = model(x)
        tracked = model(x.requires_grad_())
        for k in plain:
            torch.testing.assert_close(tracked[k], plain[k], rtol=0, atol=1e-5)
        sum(v.sum() for v in tracked.values()).backward()
        qkv_bias = model.layers[3].blocks[0].attn.qkv.bias
        self.assertGreater(qkv_bias.grad.abs().sum().item(), 0)

    def test_batch_items_are_independent(self):
        torch.manual_seed(0)
        model = tiny_backbone().eval()
        x = torch.randn(2, 3, 45, 71)
        with torch.no_grad():
            both = model(x)
            single = model(x[1:])
        for k in both:
            torch.testing.assert_close(both[k][1:], single[k], rtol=1e-5, atol=1e-5)


class TestSeMaskSwinConfig(unittest.TestCase):
    def _cfg(self, num_classes=5, **swin):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.MODEL.BACKBONE.NAME = "D2SeMaskSwinTransformer"
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
        cfg.MODEL.SWIN.EMBED_DIM = 16
        cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
        cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
        cfg.MODEL.SWIN.WINDOW_SIZE = 3
        for k, v in swin.items():
            cfg.MODEL.SWIN[k] = v
        return cfg

    def test_build_from_cfg(self):
        model = build_backbone(self._cfg())
        self.assertIsInstance(model, D2SeMaskSwinTransformer)
        self.assertEqual(model.size_divisibility, 32)
        self.assertEqual(model.output_shape()["res2_prior"].channels, 5)
        self.assertEqual(model.output_shape()["res5"].channels, 128)

    def test_default_windowed_rule(self):
        rule = lambda m: [stage.semantic_layer.windowed for stage in m.layers]  # noqa: E731
        self.assertEqual(rule(build_backbone(self._cfg(150))), [True, True, True, False])
        self.assertEqual(rule(build_backbone(self._cfg(19))), [True, True, True, True])
        mmseg = self._cfg(150, SEM_WINDOWED=[True, True, False, False])
        self.assertEqual(rule(build_backbone(mmseg)), [True, True, False, False])
        with self.assertRaisesRegex(ValueError, "one per stage"):
            build_backbone(self._cfg(5, SEM_WINDOWED=[True, False]))

    def test_windowed_and_global_share_parameters(self):
        torch.manual_seed(0)
        windowed = tiny_backbone(sem_windowed=[True] * 4)
        global_ = tiny_backbone(sem_windowed=[False] * 4)
        global_.load_state_dict(windowed.state_dict())
        x = torch.randn(1, 3, 24, 24)
        with torch.no_grad():
            a, b = windowed.eval()(x), global_.eval()(x)
        # Stage 0 runs on an 6x6 map with 3x3 windows: the two modes differ as soon as the
        # branch is live, which mmseg init makes it once gamma moves.
        torch.testing.assert_close(a["res2_prior"], b["res2_prior"])
        for layer in list(windowed.layers) + list(global_.layers):
            layer.semantic_layer.class_injection[0].gamma.data.fill_(1.0)
        with torch.no_grad():
            a, b = windowed(x), global_(x)
        self.assertGreater((a["res3"] - b["res3"]).abs().max().item(), 1e-4)

    def test_gradient_checkpointing_matches(self):
        torch.manual_seed(0)
        plain = tiny_backbone(sem_dropout=0.0).train()
        ckpt = tiny_backbone(sem_dropout=0.0, use_checkpoint=True).train()
        ckpt.load_state_dict(plain.state_dict())
        x = torch.randn(2, 3, 40, 36)
        for model in (plain, ckpt):
            out = model(x)
            sum(v.square().mean() for v in out.values()).backward()
        for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)

    def test_official_keys_and_shapes(self):
        for name, num_classes, sem_window in [
            ("semask_swinL_mask2former_ade20k.txt", 150, 12),
            ("semask_swinL_mask2former_cityscapes.txt", 19, 7),
        ]:
            spec = official_keys("backbone.", name)
            with torch.device("meta"):  # shapes only: skip allocation and init
                model = D2SeMaskSwinTransformer(
                    **SWIN_SIZES["large"], num_classes=num_classes, sem_window_size=sem_window
                )
            ours = {k: list(v.shape) for k, v in model.state_dict().items()}
            self.assertEqual(ours, spec, name)

    def test_parameter_counts(self):
        # Swin + semantic layers for K = 150; the semantic layers add 2.01M / 3.37M / 7.14M.
        expected = {
            "tiny": (29_526_382, 2_005_684),
            "small": (50_844_286, 2_005_684),
            "base": (90_250_540, 3_370_164),
            "large": (202_344_808, 7_143_604),
        }
        for size, (total, semantic) in expected.items():
            with torch.device("meta"):
                model = D2SeMaskSwinTransformer(**SWIN_SIZES[size], num_classes=150)
            self.assertEqual(sum(p.numel() for p in model.parameters()), total, size)
            self.assertEqual(sum(p.numel() for p in semantic_params(model).values()), semantic)


class TestSemanticInit(unittest.TestCase):
    """Which semantic-layer parameters learn under each init mode."""

    def _step(self, model, prior_loss, optimizer, x, labels):
        optimizer.zero_grad()
        out = model(x)
        loss = sum(out[f].square().mean() for f in FEATURES)
        loss = loss + prior_loss({k: out[k] for k in PRIORS}, labels)["loss_cate"]
        loss.backward()
        grads = {k: p.grad.clone() for k, p in semantic_params(model).items()}
        optimizer.step()
        return grads

    def _train(self, sem_init, steps):
        torch.manual_seed(0)
        model = tiny_backbone(sem_init=sem_init).train()
        prior_loss = SemanticPriorLoss(
            in_features=PRIORS, in_strides=[4, 8, 16, 32], ignore_value=255
        ).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        x = torch.randn(2, 3, 32, 32)
        labels = torch.randint(0, 5, (2, 32, 32))
        return model, [self._step(model, prior_loss, optimizer, x, labels) for _ in range(steps)]

    def test_mmseg_init_trains_every_semantic_parameter(self):
        model, grads = self._train("mmseg", steps=2)
        self.assertEqual(len(grads[1]), 4 * 11)  # norm1 (2), four Linears (8), gamma
        for name, grad in grads[1].items():
            self.assertGreater(grad.abs().sum().item(), 0.0, name)
        # Before the first step gamma is 0, so only gamma, norm1 and mlp_cls_q learn.
        self.assertTrue(all(torch.all(g == 0) for k, g in grads[0].items() if "mlp_res" in k))
        self.assertTrue(all(g.abs().sum() > 0 for k, g in grads[0].items() if "gamma" in k))

    def test_official_init_branch_stays_dead(self):
        model, grads = self._train("official", steps=3)
        for step in grads:
            for name, grad in step.items():
                if any(n in name for n in ("mlp_cls_k", "mlp_v", "mlp_res", "gamma")):
                    self.assertTrue(torch.all(grad == 0), name)
                elif "mlp_cls_q" in name:
                    self.assertGreater(grad.abs().sum().item(), 0.0, name)
        for name, p in semantic_params(model, ("mlp_res", "gamma")).items():
            self.assertTrue(torch.all(p == 0), name)

    def test_unknown_init_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "official"):
            tiny_backbone(sem_init="xavier")

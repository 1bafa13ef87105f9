"""SeMask Semantic-FPN: the head and the SemanticSegmentor-based meta-architecture, on CPU."""

import unittest
from unittest import mock

import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config
from semask_d2.modeling.meta_arch import SeMaskFPNHead, SeMaskSemanticSegmentor
from semask_d2.modeling.semantic_prior import SemanticPriorLoss

FEATURES = ["res2", "res3", "res4", "res5"]
K = 5
# Tiny stand-ins for the backbone features: channels 16 * 2^i at strides 4..32.
SHAPES = {f: ShapeSpec(channels=16 * 2**i, stride=4 * 2**i) for i, f in enumerate(FEATURES)}


def tiny_head(**overrides):
    kwargs = dict(num_classes=K, conv_dims=16, common_stride=4, norm="BN", ignore_value=255)
    kwargs.update(overrides)
    return SeMaskFPNHead(SHAPES, **kwargs)


def random_features(batch, height, width):
    return {
        f: torch.randn(batch, s.channels, height // s.stride, width // s.stride)
        for f, s in SHAPES.items()
    }


def tiny_cfg():
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "SeMaskSemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "D2SeMaskSwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.WINDOW_SIZE = 3
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 3
    cfg.MODEL.SWIN.SEM_WINDOWED = [True, True, False, False]
    # No stochastic depth: with 2 images a dropped block could leave a parameter without gradient.
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SeMaskFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = FEATURES
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = K
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.SEMASK.PRIOR_CONVENTION = "mmseg"
    # Not the default 0.4, so that the test sees the config value reach loss_cate.
    cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.3
    return cfg


def tiny_model(cfg=None):
    torch.manual_seed(0)
    return build_model(cfg or tiny_cfg())


def batch(sizes=((64, 64), (45, 71))):
    """Images with labels in [0, K) and an ignored stripe, one dict per (H, W)."""
    generator = torch.Generator().manual_seed(1)
    inputs = []
    for h, w in sizes:
        labels = torch.randint(0, K, (h, w), generator=generator)
        labels[:, :3] = 255
        image = torch.randint(0, 256, (3, h, w), generator=generator).float()
        inputs.append({"image": image, "sem_seg": labels})
    return inputs


class TestSeMaskFPNHead(unittest.TestCase):
    def test_output_shapes(self):
        head = tiny_head()
        features = random_features(2, 64, 96)
        head.eval()
        with torch.no_grad():
            logits, losses = head(features)
        self.assertEqual(tuple(logits.shape), (2, K, 64, 96))
        self.assertEqual(losses, {})
        head.train()
        targets = torch.randint(0, K, (2, 64, 96))
        results, losses = head(features, targets)
        self.assertIsNone(results)
        self.assertEqual(set(losses), {"loss_sem_seg"})
        self.assertTrue(torch.isfinite(losses["loss_sem_seg"]))

    def test_dropout_directly_before_predictor(self):
        head = tiny_head(dropout=1.0)
        features = random_features(2, 32, 32)
        # Training with p = 1 zeroes the classifier input: the logits are the predictor bias.
        head.train()
        logits = head.layers(features)
        expected = head.predictor.bias.view(1, K, 1, 1).expand_as(logits)
        torch.testing.assert_close(logits, expected)
        # In eval the dropout is the identity: predictor(sum of the scale heads).
        head.eval()
        with torch.no_grad():
            total = sum(h(features[f]) for f, h in zip(head.in_features, head.scale_heads))
            torch.testing.assert_close(head.layers(features), head.predictor(total))

    def test_unpadded_levels_are_resized_to_the_finest(self):
        head = tiny_head().eval()
        # A 36x36 input without padding: stride-4 map 9x9, coarser maps rounded up.
        features = {
            f: torch.randn(1, s.channels, -(-36 // s.stride), -(-36 // s.stride))
            for f, s in SHAPES.items()
        }
        with torch.no_grad():
            self.assertEqual(tuple(head.layers(features).shape), (1, K, 9, 9))

    def test_state_dict_keys(self):
        # detectron2 SemSegFPNHead names: conv blocks at even positions (Upsample in between).
        expected = {"predictor.weight": [K, 16, 1, 1], "predictor.bias": [K]}
        convs = {"res2": [0], "res3": [0], "res4": [0, 2], "res5": [0, 2, 4]}
        for f, positions in convs.items():
            for j in positions:
                in_channels = SHAPES[f].channels if j == 0 else 16
                expected[f"{f}.{j}.weight"] = [16, in_channels, 3, 3]
                for name in ("weight", "bias", "running_mean", "running_var"):
                    expected[f"{f}.{j}.norm.{name}"] = [16]
                expected[f"{f}.{j}.norm.num_batches_tracked"] = []
        state = tiny_head().state_dict()
        self.assertEqual({k: list(v.shape) for k, v in state.items()}, expected)

    def test_from_config(self):
        cfg = tiny_cfg()
        cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.25
        cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
        cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
        head = SeMaskFPNHead(cfg, SHAPES)
        self.assertEqual(head.dropout.p, 0.25)
        self.assertEqual(head.in_features, FEATURES)
        self.assertIsInstance(head.res2[0].norm, torch.nn.GroupNorm)
        self.assertEqual(head.predictor.out_channels, K)
        self.assertNotIn("res2.0.bias", head.state_dict())


class TestSeMaskSemanticSegmentor(unittest.TestCase):
    def test_build(self):
        model = tiny_model()
        self.assertIsInstance(model, SeMaskSemanticSegmentor)
        self.assertIsInstance(model.sem_seg_head, SeMaskFPNHead)
        self.assertIsInstance(model.prior_loss, SemanticPriorLoss)
        self.assertEqual(model.prior_loss.convention, "mmseg")
        # The prior decoder has no state: checkpoints hold only backbone and head keys.
        self.assertEqual(
            {k.split(".")[0] for k in model.state_dict()}, {"backbone", "sem_seg_head"}
        )

    def test_training_losses_odd_sizes(self):
        cfg = tiny_cfg()
        model = tiny_model(cfg).train()
        captured = {}
        model.backbone.register_forward_hook(lambda m, i, out: captured.update(out))
        inputs = batch()
        with EventStorage():
            losses = model(inputs)
        self.assertEqual(set(losses), {"loss_sem_seg", "loss_cate"})
        for value in losses.values():
            self.assertTrue(torch.isfinite(value))
        # SemanticSegmentor pads 64x64 and 45x71 to 64x96 (multiples of 32), labels with 255.
        labels = torch.full((2, 64, 96), 255, dtype=torch.long)
        for i, x in enumerate(inputs):
            h, w = x["sem_seg"].shape
            labels[i, :h, :w] = x["sem_seg"]
        self.assertEqual(tuple(captured["res2_prior"].shape), (2, K, 16, 24))
        reference = SemanticPriorLoss(
            in_features=[f"{f}_prior" for f in FEATURES],
            in_strides=[4, 8, 16, 32],
            ignore_value=255,
            loss_weight=1.0,
            convention="mmseg",
        ).train()
        expected = cfg.MODEL.MASK_FORMER.CATE_WEIGHT * reference(captured, labels)["loss_cate"]
        torch.testing.assert_close(losses["loss_cate"], expected)

    def _backward(self, model, inputs):
        model.zero_grad(set_to_none=True)
        with EventStorage():
            sum(model(inputs).values()).backward()

    def test_every_parameter_gets_a_gradient(self):
        model = tiny_model().train()
        inputs = batch()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        self._backward(model, inputs)
        # Every parameter is in the loss graph from the first step (DDP without
        # find_unused_parameters); gamma starts at 0, so mlp_res gets exactly 0 at first.
        for name, p in model.named_parameters():
            self.assertIsNotNone(p.grad, name)
        optimizer.step()
        self._backward(model, inputs)
        for name, p in model.named_parameters():
            self.assertGreater(p.grad.abs().sum().item(), 0.0, name)

    def test_official_init_keeps_every_parameter_in_the_graph(self):
        cfg = tiny_cfg()
        cfg.MODEL.SWIN.SEM_INIT = "official"
        model = tiny_model(cfg).train()
        self._backward(model, batch())
        for name, p in model.named_parameters():
            self.assertIsNotNone(p.grad, name)
            if "mlp_res" in name or "gamma" in name:
                # The dead branch of the detectron2 SeMask code (README.md).
                self.assertTrue(torch.all(p.grad == 0), name)

    def test_inference_sizes_and_no_prior_decoding(self):
        model = tiny_model().eval()
        inputs = batch()
        inputs[0].update(height=32, width=48)
        inputs[1].update(height=90, width=142)
        with (
            mock.patch.object(SemanticPriorLoss, "forward") as prior,
            mock.patch.object(SemanticPriorLoss, "decode") as decode,
            torch.no_grad(),
        ):
            outputs = model(inputs)
            plain = model([{"image": x["image"]} for x in inputs])
        prior.assert_not_called()
        decode.assert_not_called()
        self.assertEqual([tuple(o["sem_seg"].shape) for o in outputs], [(K, 32, 48), (K, 90, 142)])
        # Without height/width: the input size, padding cropped away.
        self.assertEqual([tuple(o["sem_seg"].shape) for o in plain], [(K, 64, 64), (K, 45, 71)])

    def test_plain_swin_has_no_prior_loss(self):
        cfg = tiny_cfg()
        cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 0
        model = tiny_model(cfg).train()
        self.assertIsNone(model.prior_loss)
        with EventStorage():
            self.assertEqual(set(model(batch())), {"loss_sem_seg"})

    def test_unused_backbone_output_is_rejected(self):
        cfg = tiny_cfg()
        cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4"]
        with self.assertRaisesRegex(ValueError, "res5"):
            build_model(cfg)

    def test_training_needs_labels(self):
        model = tiny_model().train()
        with EventStorage(), self.assertRaisesRegex(ValueError, "sem_seg"):
            model([{"image": torch.zeros(3, 32, 32)}])


if __name__ == "__main__":
    unittest.main()

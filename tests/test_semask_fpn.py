"""SeMask Semantic-FPN: SeMaskFPNHead (with the prior loss) under detectron2's SemanticSegmentor."""

import math
import unittest
from collections import Counter
from unittest import mock

import detectron2.utils.logger
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import SemanticSegmentor, build_model
from detectron2.utils.events import EventStorage

from semask_d2.modeling.meta_arch import SeMaskFPNHead, SeMaskSemanticSegmentor
from semask_d2.modeling.ohem import OHEMPixelSelector
from semask_d2.modeling.semantic_prior import SemanticPriorLoss

from model_fixtures import tiny_cfg, tiny_model

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
        cfg = fpn_cfg()
        cfg.MODEL.SEM_SEG_HEAD.DROPOUT = 0.25
        cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
        cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
        head = SeMaskFPNHead(cfg, SHAPES)
        self.assertEqual(head.dropout.p, 0.25)
        self.assertEqual(head.in_features, FEATURES)
        self.assertIsInstance(head.res2[0].norm, torch.nn.GroupNorm)
        self.assertEqual(head.predictor.out_channels, K)
        self.assertNotIn("res2.0.bias", head.state_dict())


LN2 = math.log(2.0)
# Two classes, one row of four pixels (B, K, H, W) = (1, 2, 1, 4), labels (1, 1, 4):
#   pixel 0: logits (0, 0),     label 0: p = 1/2, CE = ln 2
#   pixel 1: logits (ln 3, 0),  label 0: p = 3/4, CE = ln(4/3)
#   pixel 2: logits (ln 3, 0),  label 1: p = 1/4, CE = ln 4
#   pixel 3: ignored.
TINY_LOGITS = torch.tensor([[[[0.0, math.log(3.0), math.log(3.0), 0.0]], [[0.0, 0.0, 0.0, 0.0]]]])
TINY_LABELS = torch.tensor([[[0, 0, 1, 255]]])


class TestOHEMPixelSelector(unittest.TestCase):
    def select(self, min_kept, thresh=None, logits=TINY_LOGITS, labels=TINY_LABELS):
        return OHEMPixelSelector(min_kept, thresh)(logits, labels).tolist()

    def test_highest_losses_without_thresh(self):
        self.assertEqual(self.select(1), [[[255, 255, 1, 255]]])
        self.assertEqual(self.select(2), [[[0, 255, 1, 255]]])

    def test_min_kept_per_image(self):
        # Image 0: CE (ln 4, ln 2); image 1: CE (ln 4/3, ln 4). min_kept 1 x batch 2 keeps the
        # two ln 4 pixels, whatever image they are in.
        logits = torch.tensor(
            [
                [[[math.log(3.0), 0.0]], [[0.0, 0.0]]],
                [[[math.log(3.0), math.log(3.0)]], [[0.0, 0.0]]],
            ]
        )
        labels = torch.tensor([[[1, 0]], [[0, 1]]])
        self.assertEqual(self.select(1, logits=logits, labels=labels), [[[1, 255]], [[255, 1]]])

    def test_thresh(self):
        # Probabilities sorted: 1/4, 1/2, 3/4; threshold = max(thresh, sorted[min_kept]); keep
        # p < threshold.
        self.assertEqual(self.select(1, thresh=0.6), [[[0, 255, 1, 255]]])  # max(0.6, 1/2)
        self.assertEqual(self.select(1, thresh=0.3), [[[255, 255, 1, 255]]])  # max(0.3, 1/2)
        self.assertEqual(self.select(2, thresh=0.3), [[[0, 255, 1, 255]]])  # max(0.3, 3/4)
        self.assertEqual(self.select(0, thresh=0.3), [[[255, 255, 1, 255]]])  # max(0.3, 1/4)

    def test_min_kept_above_the_pixel_count(self):
        self.assertEqual(self.select(10), [[[0, 0, 1, 255]]])
        # As mmseg: the threshold is then the largest probability, and p < it drops that pixel.
        self.assertEqual(self.select(10, thresh=0.1), [[[0, 255, 1, 255]]])

    def test_all_pixels_ignored(self):
        labels = torch.full_like(TINY_LABELS, 255)
        for thresh in (None, 0.7):
            self.assertEqual(self.select(2, thresh, labels=labels), labels.tolist())

    def test_no_gradient(self):
        logits = TINY_LOGITS.clone().requires_grad_()
        self.assertFalse(OHEMPixelSelector(2)(logits, TINY_LABELS).requires_grad)

    def test_negative_min_kept_is_rejected(self):
        with self.assertRaises(ValueError):
            OHEMPixelSelector(-1)


class TestSeMaskFPNHeadLossOptions(unittest.TestCase):
    def loss(self, labels=TINY_LABELS, **kwargs):
        # common_stride 1: the logits are already at the label size (the x1 resize is exact).
        head = tiny_head(common_stride=1, loss_weight=2.0, **kwargs)
        return head.losses(TINY_LOGITS, labels)["loss_sem_seg"].item()

    def test_averagings(self):
        # Sum over labelled pixels: ln 2 + ln(4/3) + ln 4 = ln(32/3); times loss_weight 2.
        total = math.log(32.0 / 3.0)
        self.assertAlmostEqual(self.loss(), 2 * total / 3, places=6)
        self.assertAlmostEqual(self.loss(loss_averaging="detectron2"), 2 * total / 3, places=6)
        self.assertAlmostEqual(self.loss(loss_averaging="mmseg"), 2 * total / 4, places=6)

    def test_ohem(self):
        # min_kept 2: pixels 0 and 2, CE ln 2 + ln 4 = 3 ln 2.
        ohem = OHEMPixelSelector(2)
        self.assertAlmostEqual(self.loss(ohem=ohem), 2 * 3 * LN2 / 2, places=6)
        self.assertAlmostEqual(
            self.loss(ohem=ohem, loss_averaging="mmseg"), 2 * 3 * LN2 / 4, places=6
        )

    def test_all_pixels_ignored(self):
        labels = torch.full_like(TINY_LABELS, 255)
        self.assertEqual(self.loss(labels, loss_averaging="mmseg"), 0.0)
        self.assertEqual(self.loss(labels, ohem=OHEMPixelSelector(2), loss_averaging="mmseg"), 0.0)
        # detectron2's (PyTorch's) mean over no pixel.
        self.assertTrue(math.isnan(self.loss(labels)))

    def test_unknown_averaging_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "LOSS_AVERAGING"):
            tiny_head(loss_averaging="median")

    def test_from_config(self):
        cfg = fpn_cfg()
        self.assertIsNone(SeMaskFPNHead(cfg, SHAPES).ohem)
        cfg.MODEL.SEM_SEG_HEAD.OHEM_ENABLED = True
        cfg.MODEL.SEM_SEG_HEAD.OHEM_THRESH = 0.7
        cfg.MODEL.SEM_SEG_HEAD.OHEM_MIN_KEPT = 7
        cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGING = "mmseg"
        head = SeMaskFPNHead(cfg, SHAPES)
        self.assertEqual((head.ohem.min_kept, head.ohem.thresh), (7, 0.7))
        self.assertEqual(head.ohem.ignore_value, 255)
        self.assertEqual(head.loss_averaging, "mmseg")

    def test_defaults_keep_detectron2_loss(self):
        cfg = fpn_cfg()
        cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGING = "detectron2"
        head = SeMaskFPNHead(cfg, SHAPES).train()
        self.assertIsNone(head.ohem)
        torch.manual_seed(0)
        logits = torch.randn(2, K, 8, 8)
        labels = torch.randint(0, K, (2, 32, 32))
        labels[:, :5] = 255
        self.assertEqual(
            head.losses(logits, labels)["loss_sem_seg"].item(),
            super(SeMaskFPNHead, head).losses(logits, labels)["loss_sem_seg"].item(),
        )


def fpn_cfg():
    return tiny_cfg("fpn", num_classes=K)


def fpn_model(cfg=None):
    return tiny_model(cfg or fpn_cfg())


class TestSemanticSegmentorWithSeMaskFPNHead(unittest.TestCase):
    def test_build(self):
        model = fpn_model()
        self.assertIs(type(model), SemanticSegmentor)
        self.assertIsInstance(model.sem_seg_head, SeMaskFPNHead)
        self.assertIsInstance(model.sem_seg_head.prior_loss, SemanticPriorLoss)
        self.assertEqual(model.sem_seg_head.prior_loss.convention, "mmseg")
        # The prior decoder has no state: checkpoints hold only backbone and head keys.
        self.assertEqual(
            {k.split(".")[0] for k in model.state_dict()}, {"backbone", "sem_seg_head"}
        )

    def test_same_losses_as_the_former_meta_architecture(self):
        # Pinned from SeMaskSemanticSegmentor before SeMaskFPNHead took over loss_cate (same
        # seeds, same batch); the alias must still build the same model.
        expected = {"loss_sem_seg": 9.490219116210938, "loss_cate": 0.6510336995124817}
        for arch in ("SemanticSegmentor", "SeMaskSemanticSegmentor"):
            cfg = fpn_cfg()
            # The pinned numbers predate the recipe's mmseg averaging: check the former one ...
            cfg.MODEL.SEM_SEG_HEAD.LOSS_AVERAGING = "detectron2"
            cfg.MODEL.SEMASK.PRIOR_LOSS_AVERAGING = "detectron2"
            # ... and its padding of the odd-sized image to 64x96 (the recipe's is unpadded).
            cfg.MODEL.SWIN.SIZE_DIVISIBILITY = 32
            cfg.MODEL.SEM_SEG_HEAD.LOGITS_RESIZE = "stride"
            cfg.MODEL.META_ARCHITECTURE = arch
            model = fpn_model(cfg).train()
            self.assertIsInstance(model, SemanticSegmentor)
            torch.manual_seed(3)
            with EventStorage():
                losses = model(batch())
            self.assertEqual({k: v.item() for k, v in losses.items()}, expected, arch)

    def test_training_losses_odd_sizes(self):
        cfg = fpn_cfg()
        # Not CATE_WEIGHT: PRIOR_LOSS_WEIGHT wins when set.
        cfg.MODEL.SEMASK.PRIOR_LOSS_WEIGHT = 0.3
        model = fpn_model(cfg).train()
        captured = {}
        model.backbone.register_forward_hook(lambda m, i, out: captured.update(out))
        inputs = batch()
        with EventStorage():
            losses = model(inputs)
        self.assertEqual(set(losses), {"loss_sem_seg", "loss_cate"})
        # SemanticSegmentor pads 64x64 and 45x71 to the batch's 64x71 (the recipe's
        # MODEL.SWIN.SIZE_DIVISIBILITY 0: no multiple of 32), labels with 255.
        labels = torch.full((2, 64, 71), 255, dtype=torch.long)
        for i, x in enumerate(inputs):
            h, w = x["sem_seg"].shape
            labels[i, :h, :w] = x["sem_seg"]
        self.assertEqual(tuple(captured["res2_prior"].shape), (2, K, 16, 18))
        reference = SemanticPriorLoss(
            in_features=[f"{f}_prior" for f in FEATURES],
            in_strides=[4, 8, 16, 32],
            ignore_value=255,
            loss_weight=1.0,
            convention="mmseg",
            # The recipe's mmseg averaging: over all 2 x 64 x 71 label pixels, padding included.
            averaging="mmseg",
        ).train()
        expected = 0.3 * reference(captured, labels)["loss_cate"]
        torch.testing.assert_close(losses["loss_cate"], expected)

    def test_prior_loss_weight_defaults_to_cate_weight(self):
        cfg = fpn_cfg()
        cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.7
        self.assertEqual(fpn_model(cfg).sem_seg_head.prior_loss.loss_weight, 0.7)
        cfg.MODEL.SEMASK.PRIOR_LOSS_WEIGHT = 0.0
        self.assertEqual(fpn_model(cfg).sem_seg_head.prior_loss.loss_weight, 0.0)

    def _backward(self, model, inputs):
        model.zero_grad(set_to_none=True)
        with EventStorage():
            sum(model(inputs).values()).backward()

    def test_every_parameter_gets_a_gradient(self):
        model = fpn_model().train()
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
        cfg = fpn_cfg()
        cfg.MODEL.SWIN.SEM_INIT = "official"
        model = fpn_model(cfg).train()
        self._backward(model, batch())
        for name, p in model.named_parameters():
            self.assertIsNotNone(p.grad, name)
            if "mlp_res" in name or "gamma" in name:
                # The dead branch of the detectron2 SeMask code (README.md).
                self.assertTrue(torch.all(p.grad == 0), name)

    def test_inference_sizes_and_no_prior_decoding(self):
        model = fpn_model().eval()
        inputs = batch()
        inputs[0].update(height=32, width=48)
        inputs[1].update(height=90, width=142)
        with (
            mock.patch.object(SemanticPriorLoss, "forward") as prior,
            mock.patch.object(SemanticPriorLoss, "decode_finest") as decode,
            torch.no_grad(),
        ):
            outputs = model(inputs)
            plain = model([{"image": x["image"]} for x in inputs])
        self.assertEqual(prior.call_count, 0)
        self.assertEqual(decode.call_count, 0)
        self.assertEqual([tuple(o["sem_seg"].shape) for o in outputs], [(K, 32, 48), (K, 90, 142)])
        # Without height/width: the input size, padding cropped away.
        self.assertEqual([tuple(o["sem_seg"].shape) for o in plain], [(K, 64, 64), (K, 45, 71)])

    def test_plain_swin_has_no_prior_loss(self):
        cfg = fpn_cfg()
        cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 0
        model = fpn_model(cfg).train()
        self.assertIsNone(model.sem_seg_head.prior_loss)
        with EventStorage():
            self.assertEqual(set(model(batch())), {"loss_sem_seg"})

    def test_unused_backbone_output_is_rejected(self):
        cfg = fpn_cfg()
        cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4"]
        with self.assertRaisesRegex(ValueError, r"\['res5'\] are not used by SeMaskFPNHead"):
            build_model(cfg)

    def test_training_needs_labels(self):
        model = fpn_model().train()
        with EventStorage(), self.assertRaisesRegex(ValueError, "needs 'sem_seg' labels"):
            model([{"image": torch.zeros(3, 32, 32)}])

    def test_alias_warns_once(self):
        cfg = fpn_cfg()
        cfg.MODEL.META_ARCHITECTURE = "SeMaskSemanticSegmentor"
        # A fresh count of detectron2's log_first_n, whatever other tests logged before.
        with (
            mock.patch.object(detectron2.utils.logger, "_LOG_COUNTER", Counter()),
            self.assertLogs("semask_d2", level="WARNING") as logs,
        ):
            for _ in range(2):
                self.assertIsInstance(build_model(cfg), SeMaskSemanticSegmentor)
        self.assertEqual(len([line for line in logs.output if "deprecated" in line]), 1)


if __name__ == "__main__":
    unittest.main()

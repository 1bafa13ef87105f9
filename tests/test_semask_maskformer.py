"""
SeMask-MaskFormer: the released SeMask-L model's config and checkpoint, our T/S/B/L configs, the
pixel decoder, predictor and whole model against the float64 reference of
``mask_former_reference.py``, the full-resolution losses, training and inference.
"""

import glob
import math
import os
import re
import tempfile
import unittest

import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

import mask_former_reference as R
from semask_d2 import add_semask_config
from semask_d2.engine.weights import build_checkpointer
from semask_d2.modeling.head_family import HEAD_FAMILIES
from semask_d2.modeling.mask_former_criterion import MaskFormerSetCriterion
from semask_d2.modeling.meta_arch import SeMaskMaskFormer
from semask_d2.modeling.pixel_decoder import BasePixelDecoder
from semask_d2.modeling.transformer_decoder import TransformerPredictor

from model_fixtures import (
    CONFIG_DIR,
    flat_config,
    official_cfg,
    odd_size_inference_inputs,
    official_keys,
    parameters_without_gradient,
    tiny_cfg,
    train_steps,
    training_inputs,
)

F64 = torch.float64
OFFICIAL = "semask_swinL_maskformer_ade20k"
CONFIGS = os.path.join(CONFIG_DIR, "ade20k", "semantic-segmentation", "semask_maskformer")
LEAVES = {
    "tiny": "maskformer_semask_swin_tiny_bs16_160k.yaml",
    "small": "maskformer_semask_swin_small_bs16_160k.yaml",
    "base": "maskformer_semask_swin_base_IN21k_384_bs16_160k_res640.yaml",
    "large": "maskformer_semask_swin_large_IN21k_384_bs16_160k_res640.yaml",
}
# Full-size parameters (meta device). L: the released model (official README / paper: 219M).
PARAMS = {"tiny": 43_762_693, "small": 65_080_597, "base": 105_199_555, "large": 218_719_231}


def load(path):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def randomize_(model, seed):
    """
    O(1)-scale random values for every parameter, so that each one matters: norm weights around
    1, biases non-zero, and the semantic branch live (``gamma`` in [0.5, 1.5], ``mlp_res``).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
            if name.endswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=F64))
            elif name.endswith("relative_position_bias_table") or "embed.weight" in name:
                p.copy_(0.5 * r)
            elif p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            else:
                p.copy_(0.2 * r)


def sub_state(model, prefix):
    return {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


class TestReleasedSeMaskL(unittest.TestCase):
    """The official dump builds the released model: one Swin-L built on CPU for the class."""

    @classmethod
    def setUpClass(cls):
        cls.cfg = official_cfg(f"{OFFICIAL}.yaml")
        torch.manual_seed(0)
        cls.model = build_model(cls.cfg)

    @classmethod
    def tearDownClass(cls):
        del cls.model

    def test_official_key_list_names_and_shapes(self):
        ours = {k: list(v.shape) for k, v in self.model.state_dict().items()}
        self.assertEqual(list(ours.items()), list(official_keys(name=f"{OFFICIAL}.txt").items()))

    def test_parameter_counts(self):
        def count(prefix="", part=""):
            return sum(
                p.numel()
                for k, p in self.model.named_parameters()
                if k.startswith(prefix) and part in k
            )

        # Official SeMask-MaskFormer Swin-L: 218.72M (paper: 219M).
        self.assertEqual(count(), 218_719_231)
        self.assertEqual(count("backbone."), 202_344_808)
        self.assertEqual(count("backbone.", "semantic_layer"), 7_143_604)
        self.assertEqual(count("sem_seg_head.pixel_decoder."), 6_246_144)
        self.assertEqual(count("sem_seg_head.predictor."), 10_128_279)

    def test_the_dump_builds_the_maskformer_family(self):
        model = self.model
        self.assertIsInstance(model, SeMaskMaskFormer)
        self.assertIsInstance(model.sem_seg_head.pixel_decoder, BasePixelDecoder)
        self.assertIsInstance(model.sem_seg_head.predictor, TransformerPredictor)
        self.assertIsInstance(model.criterion, MaskFormerSetCriterion)
        self.assertEqual(model.sem_seg_head.transformer_in_feature, "res5")
        self.assertEqual(
            [s.semantic_layer.windowed for s in model.backbone.layers], [True, True, True, False]
        )
        layers = model.sem_seg_head.predictor.transformer.decoder.layers
        self.assertEqual(len(layers), 6)
        self.assertEqual(layers[0].dropout.p, 0.1)
        self.assertEqual(layers[0].self_attn.dropout, 0.1)
        # Keys the dump omits take MaskFormer's values: class weight 1 (not Mask2Former's 2).
        weights = model.criterion.weight_dict
        expected = {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
        for i in range(5):
            expected.update({f"loss_ce_{i}": 1.0, f"loss_mask_{i}": 20.0, f"loss_dice_{i}": 1.0})
        self.assertEqual(weights, expected)
        matcher = model.criterion.matcher
        self.assertEqual((matcher.cost_class, matcher.cost_mask, matcher.cost_dice), (1, 20, 1))
        # A fresh criterion: the checkpoint test overwrites the shared model's buffers.
        self.assertAlmostEqual(MaskFormerSetCriterion(self.cfg).empty_weight[-1].item(), 0.1)

    def test_checkpoint_under_the_official_names_loads_strictly(self):
        keys = official_keys(name=f"{OFFICIAL}.txt")
        # Key i holds the value i % 1000 everywhere: a misplaced tensor would show.
        checkpoint = {
            k: torch.full(shape, float(i % 1000)) for i, (k, shape) in enumerate(keys.items())
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "semask_maskformer_swinL.pth")
            torch.save({"model": checkpoint}, path)
            del checkpoint
            # The loader of train_net.py: any missing, unexpected or misshaped key raises.
            build_checkpointer(self.cfg, self.model).load(path)
        state = self.model.state_dict()
        for i, key in enumerate(keys):
            self.assertTrue(bool((state[key] == i % 1000).all()), key)


class TestConfigs(unittest.TestCase):
    def test_the_four_sizes_and_their_parameters(self):
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "maskf*")))
        self.assertEqual(found, sorted(LEAVES.values()))
        for size, name in LEAVES.items():
            with self.subTest(size=size):
                cfg = load(os.path.join(CONFIGS, name))
                with torch.device("meta"):
                    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
                self.assertEqual(sum(p.numel() for p in model.parameters()), PARAMS[size])

    def test_large_config_equals_the_released_one(self):
        # Differ on purpose: the predictor and windowed rule are stated (the dump leaves both to
        # the family rule); ResNet/ROI keys and FREEZE_AT are not read; TEST.AUG.SOFTMAX is
        # ours; the device is the user's.
        ignored = re.compile(
            r"MODEL\.(RESNETS|ROI_.+)\..+|MODEL\.BACKBONE\.FREEZE_AT|MODEL\.DEVICE|"
            r"MODEL\.SWIN\.SEM_WINDOWED|MODEL\.MASK_FORMER\.TRANSFORMER_DECODER_NAME|"
            r"TEST\.AUG\.SOFTMAX"
        )
        ours = flat_config(load(os.path.join(CONFIGS, LEAVES["large"])))
        reference = flat_config(official_cfg(f"{OFFICIAL}.yaml"))
        differ = {k: (v, reference[k]) for k, v in ours.items() if v != reference[k]}
        self.assertEqual(sorted(k for k in differ if not ignored.fullmatch(k)), [])
        self.assertEqual(
            differ["MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME"][0], "TransformerPredictor"
        )

    def test_maskformer_recipe(self):
        maskformer = HEAD_FAMILIES[0]
        for size, name in LEAVES.items():
            with self.subTest(size=size):
                cfg = load(os.path.join(CONFIGS, name))
                mf, solver = cfg.MODEL.MASK_FORMER, cfg.SOLVER
                self.assertEqual(mf.TRANSFORMER_IN_FEATURE, maskformer.transformer_in_feature)
                self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME, "BasePixelDecoder")
                self.assertEqual(mf.TRANSFORMER_DECODER_NAME, "TransformerPredictor")
                self.assertEqual(cfg.MODEL.SWIN.SEM_WINDOWED, [True, True, True, False])
                self.assertEqual(
                    (mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEC_LAYERS, mf.DROPOUT),
                    (1.0, 20.0, 1.0, 6, 0.1),
                )
                self.assertEqual((solver.BASE_LR, solver.WEIGHT_DECAY), (6e-5, 0.01))
                self.assertEqual((solver.WARMUP_ITERS, solver.WARMUP_FACTOR), (1500, 1e-6))
                self.assertEqual((solver.MAX_ITER, solver.IMS_PER_BATCH), (160000, 16))
                self.assertEqual(solver.BACKBONE_MULTIPLIER, 1.0)
                self.assertEqual(solver.CLIP_GRADIENTS.CLIP_TYPE, "full_model")
                crop = 640 if size in ("base", "large") else 512
                self.assertEqual(cfg.INPUT.CROP.SIZE, [crop, crop])
                self.assertEqual(cfg.INPUT.SIZE_DIVISIBILITY, crop)
                self.assertEqual(cfg.INPUT.MIN_SIZE_TEST, crop)
                self.assertFalse(cfg.TEST.AUG.SOFTMAX)
                # Only the released SeMask-L config turns AMP off.
                self.assertEqual(solver.AMP.ENABLED, size != "large")


class TestAgainstReference(unittest.TestCase):
    """Float64: ours equals the written-out reference (positions are computed in float32 by
    the sine encoding, hence atol 1e-5 after the decoder; everything else to 1e-10)."""

    def setUp(self):
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def tearDown(self):
        torch.set_num_threads(self._threads)

    def test_pixel_decoder_odd_sizes(self):
        strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        channels = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
        shapes = {k: ShapeSpec(channels=channels[k], stride=s) for k, s in strides.items()}
        torch.manual_seed(0)
        # 64 channels: GroupNorm(32) groups of two channels.
        decoder = BasePixelDecoder(shapes, conv_dim=64, mask_dim=16, norm="GN").double()
        randomize_(decoder, seed=1)
        gen = torch.Generator().manual_seed(2)
        # A 45 x 71 image: ceil sizes per stride, so that nearest upsampling rounds.
        sizes = {"res2": (12, 18), "res3": (6, 9), "res4": (3, 5), "res5": (2, 3)}
        feats = {k: torch.randn(2, channels[k], *sizes[k], generator=gen, dtype=F64) for k in sizes}
        mask_features, encoder, multi_scale = decoder.forward_features(feats)
        want_mask, want_fpn = R.reference_pixel_decoder(
            decoder.state_dict(), feats, list(strides), groups=32
        )
        self.assertIsNone(encoder)
        torch.testing.assert_close(mask_features, want_mask, atol=1e-10, rtol=0)
        self.assertEqual(len(multi_scale), 3)
        for got, want in zip(multi_scale, want_fpn[:3]):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

    def _predictor(self, dropout=0.0):
        torch.manual_seed(0)
        predictor = TransformerPredictor(
            24,
            num_classes=4,
            hidden_dim=32,
            num_queries=5,
            nheads=4,
            dropout=dropout,
            dim_feedforward=48,
            dec_layers=3,
            mask_dim=16,
            enforce_input_project=False,
        ).double()
        randomize_(predictor, seed=3)
        gen = torch.Generator().manual_seed(4)
        x = torch.randn(2, 24, 2, 3, generator=gen, dtype=F64)
        mask_features = torch.randn(2, 16, 9, 13, generator=gen, dtype=F64)
        return predictor, x, mask_features

    def test_predictor_every_layer(self):
        predictor, x, mask_features = self._predictor()
        want = R.reference_predictor(predictor.state_dict(), x, mask_features, heads=4)
        predictor.train()  # dropout 0: training only adds the auxiliary predictions
        got = predictor(x, mask_features)
        predictions = got["aux_outputs"] + [got]
        self.assertEqual(len(predictions), 3)
        for i, (logits, masks) in enumerate(want):
            with self.subTest(layer=i):
                torch.testing.assert_close(predictions[i]["pred_logits"], logits, atol=1e-5, rtol=0)
                torch.testing.assert_close(predictions[i]["pred_masks"], masks, atol=1e-5, rtol=0)
        with torch.no_grad():
            last = predictor.eval()(x, mask_features)
        self.assertEqual(sorted(last), ["pred_logits", "pred_masks"])
        torch.testing.assert_close(last["pred_masks"], got["pred_masks"].detach(), atol=0, rtol=0)

    def test_predictor_dropout_acts_in_training_only(self):
        predictor, x, mask_features = self._predictor(dropout=0.1)
        with torch.no_grad():
            first, second = (predictor.train()(x, mask_features) for _ in range(2))
            evaluated = [predictor.eval()(x, mask_features) for _ in range(2)]
        self.assertFalse(torch.equal(first["pred_masks"], second["pred_masks"]))
        self.assertTrue(torch.equal(evaluated[0]["pred_masks"], evaluated[1]["pred_masks"]))

    def test_whole_model_with_a_live_semantic_branch(self):
        cfg = tiny_cfg("maskformer", num_classes=4)
        cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 64
        torch.manual_seed(0)
        model = build_model(cfg).double().eval()
        randomize_(model, seed=5)
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "mlp_res.weight")):
                self.assertTrue(bool((p != 0).all()), name)
        captured = {}
        model.backbone.register_forward_hook(lambda m, i, out: captured.update(features=out))
        model.sem_seg_head.register_forward_hook(lambda m, i, out: captured.update(head=out))
        image = torch.rand(3, 45, 71, generator=torch.Generator().manual_seed(6)) * 255
        with torch.no_grad():
            (result,) = model([{"image": image}])
        feats = captured["features"]
        mask_features, _ = R.reference_pixel_decoder(
            sub_state(model, "sem_seg_head.pixel_decoder."),
            feats,
            ["res2", "res3", "res4", "res5"],
            groups=32,
        )
        logits, masks = R.reference_predictor(
            sub_state(model, "sem_seg_head.predictor."), feats["res5"], mask_features, heads=2
        )[-1]
        torch.testing.assert_close(captured["head"]["pred_logits"], logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(captured["head"]["pred_masks"], masks, atol=1e-5, rtol=0)
        # Padded to 64 x 96 (size divisibility 32); the scores cover the 45 x 71 image.
        want = R.reference_semantic_inference(logits[0], masks[0], (64, 96), (45, 71))
        torch.testing.assert_close(result["sem_seg"], want, atol=1e-5, rtol=0)


class TestTrainingAndInference(unittest.TestCase):
    def test_losses_at_full_resolution(self):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("maskformer")).train()
        inputs = training_inputs(4, sizes=((64, 64), (45, 71)))
        captured = {}
        model.sem_seg_head.register_forward_hook(lambda m, i, out: captured.update(head=out))
        with EventStorage():
            losses = model(inputs)
        aux = {f"{k}_{i}" for k in ("loss_ce", "loss_mask", "loss_dice") for i in range(2)}
        self.assertEqual(set(losses), {"loss_ce", "loss_mask", "loss_dice", "loss_cate"} | aux)
        outputs = {k: v.detach() for k, v in captured["head"].items() if k != "aux_outputs"}
        # Targets zero-padded to the 64 x 96 batch; predictions upsampled to it (no sampling).
        targets = []
        for x in inputs:
            masks = torch.zeros(len(x["instances"]), 64, 96)
            h, w = x["image"].shape[-2:]
            masks[:, :h, :w] = x["instances"].gt_masks.float()
            targets.append({"labels": x["instances"].gt_classes, "masks": masks})
        indices = model.criterion.matcher(outputs, targets)
        focal, dice, num_masks = 0.0, 0.0, sum(len(t["labels"]) for t in targets)
        for b, (queries, tgts) in enumerate(indices):
            up = R.bilinear_resize(outputs["pred_masks"][b, queries].double(), (64, 96))
            p, t = torch.sigmoid(up), targets[b]["masks"][tgts].double()
            p_t = p * t + (1 - p) * (1 - t)
            alpha_t = 0.25 * t + 0.75 * (1 - t)
            focal += (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).mean((1, 2)).sum()
            inter = (p * t).sum((1, 2))
            dice += (1 - (2 * inter + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)).sum()
        torch.testing.assert_close(
            losses["loss_mask"].double(), 20 * focal / num_masks, atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            losses["loss_dice"].double(), dice / num_masks, atol=1e-6, rtol=1e-5
        )

    def test_short_training_run_loss_goes_down(self):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("maskformer")).train()
        totals = list(train_steps(model, training_inputs(4, sizes=((48, 48), (48, 64))), 12))
        self.assertLess(sum(totals[-3:]) / 3, 0.8 * sum(totals[:3]) / 3, totals)

    def test_every_parameter_gets_a_gradient(self):
        torch.manual_seed(0)
        cfg = tiny_cfg("maskformer")
        # Dropout could zero a whole FFN unit for the batch: off for this check.
        cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
        model = build_model(cfg).train()
        list(train_steps(model, lambda: training_inputs(4), 2))
        self.assertEqual(parameters_without_gradient(model), [])

    def test_inference_at_odd_sizes(self):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("maskformer")).eval()
        with torch.no_grad():
            outputs = model(odd_size_inference_inputs())
        self.assertEqual(tuple(outputs[0]["sem_seg"].shape), (4, 90, 142))
        self.assertEqual(tuple(outputs[1]["sem_seg"].shape), (4, 61, 33))
        # Sums over queries of class probabilities times mask probabilities: in [0, Q].
        for out in outputs:
            self.assertTrue(bool((out["sem_seg"] >= 0).all()))
            self.assertTrue(bool((out["sem_seg"].sum(0) <= 6).all()))


if __name__ == "__main__":
    unittest.main()

"""
SeMask-FaPN and SeMask-MSFaPN: FeatureAlign and both pixel decoders against float64 references
written here from the official data flow, the shared GroupNorm, the official key lists and
config dumps, official-name checkpoints, and short training runs.
"""

import glob
import os
import re
import tempfile
import unittest

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from semask_d2 import add_semask_config
from semask_d2.modeling.criterion import SetCriterion
from semask_d2.modeling.head_family import head_family
from semask_d2.modeling.pixel_decoder import (
    PIXEL_DECODER_REGISTRY,
    FeatureAlign,
    MSDeformAttnPixelDecoder,
    MSDeformAttnPixelFANDecoder,
    PixelFANDecoder,
    build_pixel_decoder,
)
from semask_d2.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder

from model_fixtures import (
    CONFIG_DIR,
    flat_config,
    official_cfg,
    official_keys,
    parameters_without_gradient,
    tiny_cfg,
    train_steps,
    training_inputs,
)
from test_deform_conv import deform_conv_reference
from test_pixel_decoder import make_cfg, make_features, make_input_shape

FAMILIES = {"fapn": "PixelFANDecoder", "msfapn": "MSDeformAttnPixelFANDecoder"}
SWIN_L_CHANNELS = [192, 384, 768, 1536]


def decoder_cfg(family, **kwargs):
    """test_pixel_decoder's small decoder config (32 channels) for `family`."""
    cfg = make_cfg(**kwargs)
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = FAMILIES[family]
    return cfg


def randomize(module, seed):
    """Move the parameters that start trivial (norm affines, biases, the zero conv_offset_mask)
    to values that make every term of the references matter; offsets reach several pixels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "conv_offset_mask" in name:
                p.copy_(noise * (0.1 if name.endswith("weight") else 0.5))
            elif p.dim() == 1:
                p.add_(0.2 * noise)
    return module


def conv_norm(x, state, prefix, padding, relu):
    """Conv without bias + GroupNorm(32) (+ ReLU), parameters by their official names."""
    y = F.conv2d(x, state[f"{prefix}.weight"], padding=padding)
    y = F.group_norm(y, 32, state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"])
    return F.relu(y) if relu else y


def feature_align_reference(state, prefix, feat_l, feat_s):
    """FeatureAlign: offset = GN(conv1x1(cat[l, 2 s])); 3x3 conv_offset_mask on it, the first two
    thirds as offsets, sigmoid of the rest as mask; relu(DCN(s)) + l."""
    guide = conv_norm(torch.cat([feat_l, 2 * feat_s], 1), state, f"{prefix}offset", 0, False)
    predicted = F.conv2d(
        guide,
        state[f"{prefix}dcpack_L2.conv_offset_mask.weight"],
        state[f"{prefix}dcpack_L2.conv_offset_mask.bias"],
        padding=1,
    )
    split = predicted.shape[1] * 2 // 3
    out = deform_conv_reference(
        feat_s,
        predicted[:, :split],
        torch.sigmoid(predicted[:, split:]),
        state[f"{prefix}dcpack_L2.weight"],
        state[f"{prefix}dcpack_L2.bias"],
        padding=1,
    )
    return F.relu(out) + feat_l


def nearest_up(y, size):
    """Nearest resize to `size`: output row i reads input row floor(i * h_in / h_out)."""
    rows = torch.arange(size[0]) * y.shape[-2] // size[0]
    cols = torch.arange(size[1]) * y.shape[-1] // size[1]
    return y[:, :, rows][:, :, :, cols]


def fapn_reference(state, features, names):
    """PixelFANDecoder: layer_n on the coarsest map, then per finer level k
    y = layer_k(align_k(lat, lat + nearest_up(y))), lat = adapter_k(x_k); 3x3 mask_features."""
    n = len(names)
    y = conv_norm(features[names[-1]], state, f"layer_{n}", 1, True)
    outputs = [y]
    for k in range(n - 1, 0, -1):
        lateral = conv_norm(features[names[k - 1]], state, f"adapter_{k}", 0, False)
        top_down = lateral + nearest_up(y, lateral.shape[-2:])
        y = conv_norm(
            feature_align_reference(state, f"align_{k}.", lateral, top_down),
            state,
            f"layer_{k}",
            1,
            True,
        )
        outputs.append(y)
    mask = F.conv2d(y, state["mask_features.weight"], state["mask_features.bias"], padding=1)
    return mask, outputs[:3]


class TestFeatureAlign(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.align = FeatureAlign(32, norm=nn.GroupNorm(32, 32)).double()
        g = torch.Generator().manual_seed(1)
        self.feat_l = torch.randn(2, 32, 5, 7, generator=g, dtype=torch.float64)
        self.feat_s = torch.randn(2, 32, 5, 7, generator=g, dtype=torch.float64)

    def test_official_parameter_names_and_init(self):
        shapes = {k: list(v.shape) for k, v in self.align.state_dict().items()}
        self.assertEqual(
            shapes,
            {
                "offset.weight": [32, 64, 1, 1],
                "offset.norm.weight": [32],
                "offset.norm.bias": [32],
                "dcpack_L2.weight": [32, 32, 3, 3],
                "dcpack_L2.bias": [32],
                "dcpack_L2.conv_offset_mask.weight": [216, 32, 3, 3],
                "dcpack_L2.conv_offset_mask.bias": [216],
            },
        )
        # At init: offsets 0, mask 0.5, bias 0, so relu(0.5 conv3x3(feat_s)) + feat_l.
        weight = self.align.dcpack_L2.weight
        expected = F.relu(F.conv2d(self.feat_s, 0.5 * weight, padding=1)) + self.feat_l
        torch.testing.assert_close(
            self.align(self.feat_l, self.feat_s), expected, rtol=0, atol=1e-12
        )

    def test_matches_reference(self):
        randomize(self.align, seed=2)
        state = self.align.state_dict()
        ours = self.align(self.feat_l, self.feat_s)
        expected = feature_align_reference(state, "", self.feat_l, self.feat_s)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-11)
        # The factor 2 on the top-down map matters.
        undoubled = feature_align_reference(state, "", self.feat_l, self.feat_s / 2)
        self.assertGreater((undoubled - expected).abs().max().item(), 0.1)
        # Offsets of several pixels: the case exercises real deformation.
        guide = self.align.offset(torch.cat([self.feat_l, 2 * self.feat_s], 1))
        offsets = self.align.dcpack_L2.conv_offset_mask(guide)[:, :144]
        self.assertGreater(offsets.abs().max().item(), 3.0)

    def test_maps_of_different_sizes_are_rejected(self):
        with self.assertRaisesRegex(ValueError, r"one size; got \(5, 7\) and \(3, 4\)"):
            self.align(self.feat_l, self.feat_s[..., :3, :4])


class TestPixelFANDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.input_shape = make_input_shape([8, 16, 24, 32])
        self.model = build_pixel_decoder(decoder_cfg("fapn"), self.input_shape)

    def test_registered_with_a_shared_group_norm(self):
        self.assertIs(PIXEL_DECODER_REGISTRY.get("PixelFANDecoder"), PixelFANDecoder)
        self.assertIsInstance(self.model, PixelFANDecoder)
        for k in (1, 2, 3):
            norm = getattr(self.model, f"layer_{k}").norm
            self.assertIsInstance(norm, nn.GroupNorm)
            self.assertIs(getattr(self.model, f"align_{k}").offset.norm, norm)
        self.assertFalse(hasattr(self.model, "adapter_4") or hasattr(self.model, "align_4"))
        # Both keys in the state dict; the parameters count once (3 x 64 shared values).
        state = self.model.state_dict()
        self.assertIn("align_1.offset.norm.weight", state)
        self.assertIn("layer_1.norm.weight", state)
        in_state = sum(v.numel() for v in state.values())
        in_params = sum(p.numel() for p in self.model.parameters())
        self.assertEqual(in_state - in_params, 3 * 2 * 32)

    def test_matches_reference_at_odd_size(self):
        model = randomize(self.model.double(), seed=3)
        features = {k: v.double() for k, v in make_features(self.input_shape, 45, 71).items()}
        mask, coarsest, multi_scale = model.forward_features(features)
        self.assertIsNone(coarsest)
        expected_mask, expected_multi = fapn_reference(
            model.state_dict(), features, ["res2", "res3", "res4", "res5"]
        )
        self.assertEqual(mask.shape, (2, 16, 12, 18))
        self.assertEqual(
            [tuple(x.shape) for x in multi_scale], [(2, 32, 2, 3), (2, 32, 3, 5), (2, 32, 6, 9)]
        )
        torch.testing.assert_close(mask, expected_mask, rtol=0, atol=1e-10)
        for ours, expected in zip(multi_scale, expected_multi):
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-10)

    def test_channels_must_suit_the_deformable_groups(self):
        cfg = decoder_cfg("fapn", conv_dim=12)
        cfg.MODEL.SEM_SEG_HEAD.NORM = ""  # GroupNorm(32) would reject 12 channels first
        with self.assertRaisesRegex(ValueError, "not divisible by 8 .*CONVS_DIM"):
            build_pixel_decoder(cfg, self.input_shape)

    def test_keys_and_shapes_match_official_swin_l(self):
        expected = official_keys(
            "sem_seg_head.pixel_decoder.", "semask_swinL_fapn_mask2former_ade20k.txt"
        )
        cfg = decoder_cfg("fapn", conv_dim=256, mask_dim=256)
        with torch.device("meta"):
            model = build_pixel_decoder(cfg, make_input_shape(SWIN_L_CHANNELS))
        ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        self.assertEqual(ours, list(expected.items()))
        self.assertEqual(sum(p.numel() for p in model.parameters()), 9_903_240)


class TestMSDeformAttnPixelFANDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.input_shape = make_input_shape([8, 16, 24, 32])
        self.model = build_pixel_decoder(decoder_cfg("msfapn"), self.input_shape)

    def test_registered_subclass_with_a_shared_group_norm(self):
        registered = PIXEL_DECODER_REGISTRY.get("MSDeformAttnPixelFANDecoder")
        self.assertIs(registered, MSDeformAttnPixelFANDecoder)
        self.assertIsInstance(self.model, MSDeformAttnPixelDecoder)
        self.assertIs(self.model.align_1.offset.norm, self.model.layer_1.norm)
        plain = build_pixel_decoder(make_cfg(), self.input_shape)
        extra = [k for k in self.model.state_dict() if k not in plain.state_dict()]
        self.assertEqual([k for k in extra if not k.startswith("align_1.")], [])
        self.assertEqual(len(extra), 7)

    def test_matches_reference(self):
        # The encoder levels are MSDeformAttnPixelDecoder's (tested there): a plain decoder with
        # the same weights gives them. The res2 level is checked against the float64 reference.
        # eval(): the encoder's dropout (MASK_FORMER.DROPOUT) would draw different masks.
        model = randomize(self.model, seed=4).eval()
        plain = build_pixel_decoder(make_cfg(), self.input_shape).eval()
        state = model.state_dict()
        plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("align_")})
        features = make_features(self.input_shape, 45, 71)
        mask, coarsest, multi_scale = model.forward_features(features)
        _, _, plain_multi_scale = plain.forward_features(features)
        for ours, expected in zip(multi_scale, plain_multi_scale):
            torch.testing.assert_close(ours, expected, rtol=0, atol=0)
        self.assertIs(coarsest, multi_scale[0])

        state = {k: v.double() for k, v in state.items()}
        lateral = conv_norm(features["res2"].double(), state, "adapter_1", 0, False)
        up = F.interpolate(
            multi_scale[-1].double(), size=(12, 18), mode="bilinear", align_corners=False
        )
        aligned = feature_align_reference(state, "align_1.", lateral, lateral + up)
        y = conv_norm(aligned, state, "layer_1", 1, True)
        expected = F.conv2d(y, state["mask_features.weight"], state["mask_features.bias"])
        self.assertEqual(mask.shape, (2, 16, 12, 18))
        # float32 model against the float64 reference.
        torch.testing.assert_close(mask.double(), expected, rtol=0, atol=1e-4)
        # Without the alignment the result differs clearly.
        plain_mask, _, _ = plain.forward_features(features)
        self.assertGreater((plain_mask - mask).abs().max().item(), 0.1)

    def test_float32_under_bf16_autocast(self):
        features = {k: v.bfloat16() for k, v in make_features(self.input_shape, 64, 64).items()}
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            mask, _, multi_scale = self.model(features)
        for x in (mask, *multi_scale):
            self.assertEqual(x.dtype, torch.float32)
            self.assertTrue(torch.isfinite(x).all())

    def test_keys_and_shapes_match_official_swin_l(self):
        expected = official_keys(
            "sem_seg_head.pixel_decoder.", "semask_swinL_msfapn_mask2former_ade20k.txt"
        )
        cfg = decoder_cfg("msfapn", conv_dim=256, mask_dim=256, enc_layers=6, ffn=None, heads=8)
        with torch.device("meta"):
            model = build_pixel_decoder(cfg, make_input_shape(SWIN_L_CHANNELS))
        ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        self.assertEqual(ours, list(expected.items()))
        self.assertEqual(sum(p.numel() for p in model.parameters()), 7_009_176)


class TestOfficialCheckpoints(unittest.TestCase):
    def test_official_swin_l_decoder_weights_load_strictly(self):
        # A checkpoint of the official names and shapes (one value per shared GroupNorm, as a
        # saved official model holds), loaded strictly into the Swin-L decoders.
        for family, kwargs in [
            ("fapn", {}),
            ("msfapn", {"enc_layers": 6, "ffn": None, "heads": 8}),
        ]:
            with self.subTest(family=family):
                keys = official_keys(
                    "sem_seg_head.pixel_decoder.",
                    f"semask_swinL_{family}_mask2former_ade20k.txt",
                )
                g = torch.Generator().manual_seed(0)
                checkpoint = {k: torch.randn(shape, generator=g) for k, shape in keys.items()}
                for k in (1, 2, 3):
                    for p in ("weight", "bias"):
                        if f"layer_{k}.norm.{p}" in checkpoint:
                            checkpoint[f"align_{k}.offset.norm.{p}"] = checkpoint[
                                f"layer_{k}.norm.{p}"
                            ]
                cfg = decoder_cfg(family, conv_dim=256, mask_dim=256, **kwargs)
                model = build_pixel_decoder(cfg, make_input_shape(SWIN_L_CHANNELS))
                model.load_state_dict(checkpoint, strict=True)
                for key, value in model.state_dict().items():
                    self.assertTrue(torch.equal(value, checkpoint[key]), key)

    def test_round_trip_of_tiny_models_with_the_shared_group_norm(self):
        for family in FAMILIES:
            with self.subTest(family=family):
                torch.manual_seed(0)
                source = randomize(build_model(tiny_cfg(family)), seed=5)
                target = build_model(tiny_cfg(family))
                with tempfile.TemporaryDirectory() as tmp:
                    DetectionCheckpointer(source, save_dir=tmp).save("model_final")
                    loaded = torch.load(os.path.join(tmp, "model_final.pth"), weights_only=True)
                self.assertIn(
                    "sem_seg_head.pixel_decoder.align_1.offset.norm.weight", loaded["model"]
                )
                target.load_state_dict(loaded["model"], strict=True)
                for key, value in source.state_dict().items():
                    self.assertTrue(torch.equal(target.state_dict()[key], value), key)
                decoder = target.sem_seg_head.pixel_decoder
                self.assertIs(decoder.align_1.offset.norm, decoder.layer_1.norm)


class OfficialDumpChecks:
    """The full SeMask-L model of an official dump, built once on the meta device."""

    FAMILY = ""
    FAMILY_NAME = ""
    PARAMS = 0
    DECODER_PARAMS = 0

    @classmethod
    def setUpClass(cls):
        cls.name = f"semask_swinL_{cls.FAMILY}_mask2former_ade20k"
        cls.cfg = official_cfg(f"{cls.name}.yaml")
        cls.cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            cls.model = build_model(cls.cfg)

    def test_builds_the_official_key_list(self):
        ours = [(k, list(v.shape)) for k, v in self.model.state_dict().items()]
        self.assertEqual(ours, list(official_keys(name=f"{self.name}.txt").items()))

    def test_parameter_counts(self):
        count = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in [
                ("model", self.model),
                ("backbone", self.model.backbone),
                ("pixel_decoder", self.model.sem_seg_head.pixel_decoder),
                ("predictor", self.model.sem_seg_head.predictor),
            ]
        }
        expected = {
            "model": self.PARAMS,
            "backbone": 202_344_808,
            "pixel_decoder": self.DECODER_PARAMS,
            "predictor": 14_497_431,
        }
        self.assertEqual(count, expected)

    def test_family_stage_rule_predictor_and_criterion(self):
        # The dump states no rule: its family's applies.
        self.assertEqual(self.cfg.MODEL.SWIN.SEM_WINDOWED, [])
        self.assertEqual(head_family(self.cfg).name, self.FAMILY_NAME)
        windowed = [stage.semantic_layer.windowed for stage in self.model.backbone.layers]
        self.assertEqual(windowed, [True, True, False, False])
        decoder = self.model.sem_seg_head.pixel_decoder
        self.assertEqual(type(decoder).__name__, FAMILIES[self.FAMILY])
        self.assertIsInstance(self.model.sem_seg_head.predictor, MultiScaleMaskedTransformerDecoder)
        self.assertIsInstance(self.model.criterion, SetCriterion)

    def test_our_large_config_is_the_dump(self):
        # As tests/test_configs.py for SeMask-Mask2Former: keys that differ on purpose are
        # ignored; our file states the windowed rule the dump leaves to the family.
        ignored = re.compile(
            r"MODEL\.(RESNETS|ROI_.+)\..+|MODEL\.BACKBONE\.FREEZE_AT|MODEL\.DEVICE|"
            r"MODEL\.SWIN\.SEM_WINDOWED|TEST\.AUG\.SOFTMAX"
        )
        (path,) = glob.glob(
            os.path.join(
                CONFIG_DIR, "ade20k", "semantic-segmentation", f"semask_{self.FAMILY}", "*large*"
            )
        )
        ours = get_cfg()
        add_semask_config(ours)
        ours.merge_from_file(path)
        reference = flat_config(official_cfg(f"{self.name}.yaml"))
        differ = [
            k
            for k, v in flat_config(ours).items()
            if not ignored.fullmatch(k) and v != reference[k]
        ]
        self.assertEqual(differ, [])
        self.assertEqual(ours.MODEL.SWIN.SEM_WINDOWED, [True, True, False, False])


class TestOfficialFaPNDump(OfficialDumpChecks, unittest.TestCase):
    FAMILY = "fapn"
    FAMILY_NAME = "FaPN"
    # Official: 226,745,479 (paper: 227M).
    PARAMS = 226_745_479
    DECODER_PARAMS = 9_903_240


class TestOfficialMSFaPNDump(OfficialDumpChecks, unittest.TestCase):
    FAMILY = "msfapn"
    FAMILY_NAME = "MSFaPN"
    # Official: 223,851,415 (paper: 224M).
    PARAMS = 223_851_415
    DECODER_PARAMS = 7_009_176


class TestTraining(unittest.TestCase):
    def test_short_fapn_training_run_loss_goes_down(self):
        torch.manual_seed(0)
        model = build_model(tiny_cfg("fapn")).train()
        totals = list(train_steps(model, training_inputs(4, sizes=((48, 48), (48, 64))), 12))
        self.assertLess(sum(totals[-3:]) / 3, 0.9 * sum(totals[:3]) / 3, totals)

    def test_alignment_learns_from_the_second_step(self):
        # conv_offset_mask starts at zero, so the offset convs get exactly zero gradient on the
        # first step (as in the official model); every decoder parameter learns from the second.
        # MSFaPN's level_embed is zero on the first step too (tests/test_pixel_decoder.py).
        for family, first_step_zero in [
            ("fapn", {"align_1.offset.weight", "align_2.offset.weight", "align_3.offset.weight"}),
            ("msfapn", {"align_1.offset.weight", "transformer.level_embed"}),
        ]:
            with self.subTest(family=family):
                torch.manual_seed(0)
                model = build_model(tiny_cfg(family)).train()
                decoder = model.sem_seg_head.pixel_decoder
                zero = [
                    set(parameters_without_gradient(decoder))
                    for _ in train_steps(model, lambda: training_inputs(4), 2)
                ]
                self.assertEqual(zero, [first_step_zero, set()])


if __name__ == "__main__":
    unittest.main()

"""MSDeformAttnPixelDecoder: shapes, official state-dict keys, gradients, autocast."""

import math
import unittest
from collections import Counter
from unittest import mock

import detectron2.utils.logger
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from semask_d2 import add_semask_config
from semask_d2.modeling.pixel_decoder import (
    PIXEL_DECODER_REGISTRY,
    MSDeformAttnPixelDecoder,
    PositionEmbeddingSine,
    build_pixel_decoder,
)
from semask_d2.modeling.pixel_decoder.deformable_encoder import pixel_centre_reference_points

from model_fixtures import official_keys

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def make_cfg(conv_dim=32, mask_dim=16, enc_layers=1, ffn=64, heads=2):
    cfg = get_cfg()
    add_semask_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.CONVS_DIM = conv_dim
    head.MASK_DIM = mask_dim
    head.NORM = "GN"
    head.TRANSFORMER_ENC_LAYERS = enc_layers
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = ffn
    # As in the official code, the deformable attention has MASK_FORMER.NHEADS heads.
    cfg.MODEL.MASK_FORMER.NHEADS = heads
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = heads
    return cfg


def make_input_shape(channels):
    """Backbone shapes, plus SeMask prior maps the pixel decoder must ignore."""
    shape = {k: ShapeSpec(channels=c, stride=STRIDES[k]) for k, c in zip(STRIDES, channels)}
    shape.update({f"{k}_prior": ShapeSpec(channels=150, stride=s) for k, s in STRIDES.items()})
    return shape


def make_features(input_shape, height, width, batch=2, seed=0):
    """Features of a height x width image: ceil sizes at each stride, as a Swin gives."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(
            batch,
            s.channels,
            math.ceil(height / s.stride),
            math.ceil(width / s.stride),
            generator=g,
        )
        for k, s in input_shape.items()
    }


class TestPixelDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.input_shape = make_input_shape([8, 16, 24, 32])
        self.model = build_pixel_decoder(make_cfg(), self.input_shape)

    def test_registered_and_built_from_cfg(self):
        self.assertIs(
            PIXEL_DECODER_REGISTRY.get("MSDeformAttnPixelDecoder"), MSDeformAttnPixelDecoder
        )
        self.assertIsInstance(self.model, MSDeformAttnPixelDecoder)
        self.assertEqual(self.model.in_features, ["res2", "res3", "res4", "res5"])
        self.assertEqual(self.model.transformer_in_features, ["res5", "res4", "res3"])
        attn = self.model.transformer.encoder.layers[0].self_attn
        self.assertEqual((attn.n_heads, attn.n_levels, attn.n_points), (2, 3, 4))
        self.assertEqual(self.model.transformer.encoder.layers[0].linear1.out_features, 64)

    def test_official_reading_of_heads_points_and_ffn(self):
        cfg = make_cfg(heads=4)
        head = cfg.MODEL.SEM_SEG_HEAD
        # Official keys the official code never reads, and our FFN key left unset.
        head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
        head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 2
        head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = None
        with (
            mock.patch.object(detectron2.utils.logger, "_LOG_COUNTER", Counter()),
            self.assertLogs("semask_d2", level="WARNING") as logs,
        ):
            for _ in range(2):
                model = build_pixel_decoder(cfg, self.input_shape)
        layer = model.transformer.encoder.layers[0]
        attn = layer.self_attn
        self.assertEqual((attn.n_heads, attn.n_points, layer.linear1.out_features), (4, 4, 1024))
        self.assertEqual(list(attn.sampling_offsets.weight.shape), [4 * 3 * 4 * 2, 32])
        # One warning per ignored key, however many models are built.
        self.assertEqual(len(logs.output), 2, logs.output)
        self.assertIn("N_HEADS = 8 is not read", logs.output[0])
        self.assertIn("N_POINTS = 2 is not read", logs.output[1])

    def test_output_shapes_odd_size(self):
        features = make_features(self.input_shape, 45, 71)  # prior maps included, ignored
        mask_features, coarsest, multi_scale = self.model.forward_features(features)
        self.assertEqual(mask_features.shape, (2, 16, 12, 18))
        self.assertEqual(coarsest.shape, (2, 32, 2, 3))
        self.assertEqual(
            [tuple(x.shape) for x in multi_scale], [(2, 32, 2, 3), (2, 32, 3, 5), (2, 32, 6, 9)]
        )
        self.assertIs(multi_scale[0], coarsest)
        for x in (mask_features, *multi_scale):
            self.assertTrue(torch.isfinite(x).all())

    def _grads(self):
        self.model.zero_grad()
        features = make_features(self.input_shape, 45, 71)
        mask_features, _, multi_scale = self.model(features)
        loss = sum((x * torch.randn_like(x)).sum() for x in (mask_features, *multi_scale))
        loss.backward()
        return {name: p.grad for name, p in self.model.named_parameters()}

    def test_gradients_reach_every_parameter(self):
        # At init the queries (hence positions and level_embed) only feed sampling_offsets and
        # attention_weights, whose weights are zero: level_embed gets exactly zero gradient on
        # the first step, as in the official model.
        for name, grad in self._grads().items():
            with self.subTest(name):
                self.assertIsNotNone(grad)
                if name == "transformer.level_embed":
                    self.assertEqual(grad.abs().sum().item(), 0)
                else:
                    self.assertGreater(grad.abs().sum().item(), 0)
        # Once those weights move, level_embed trains too.
        for layer in self.model.transformer.encoder.layers:
            torch.nn.init.normal_(layer.self_attn.sampling_offsets.weight, std=0.01)
        self.assertGreater(self._grads()["transformer.level_embed"].abs().sum().item(), 0)

    def test_float32_under_bf16_autocast(self):
        features = {k: v.bfloat16() for k, v in make_features(self.input_shape, 64, 64).items()}
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            mask_features, _, multi_scale = self.model(features)
        for x in (mask_features, *multi_scale):
            self.assertEqual(x.dtype, torch.float32)
            self.assertTrue(torch.isfinite(x).all())


class TestOfficialStateDict(unittest.TestCase):
    def test_keys_and_shapes_match_official_swin_l(self):
        expected = list(official_keys("sem_seg_head.pixel_decoder.").items())
        cfg = make_cfg(conv_dim=256, mask_dim=256, enc_layers=6, ffn=None, heads=8)
        with torch.device("meta"):  # no memory, no init cost
            model = build_pixel_decoder(cfg, make_input_shape([192, 384, 768, 1536]))
        ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        self.assertEqual(ours, expected)


class TestPositionEmbeddingSine(unittest.TestCase):
    def test_values_by_definition(self):
        h, w, feats = 3, 5, 8
        pos = PositionEmbeddingSine(num_pos_feats=feats)(torch.zeros(2, 7, h, w))
        self.assertEqual(pos.shape, (2, 2 * feats, h, w))
        self.assertEqual(list(PositionEmbeddingSine().parameters()), [])
        for i, j in ((0, 0), (2, 3), (1, 4)):
            y = (i + 1) / (h + 1e-6) * 2 * math.pi
            x = (j + 1) / (w + 1e-6) * 2 * math.pi
            for k in range(feats):
                freq = 10000 ** (2 * (k // 2) / feats)
                trig = math.sin if k % 2 == 0 else math.cos
                self.assertAlmostEqual(pos[1, k, i, j].item(), trig(y / freq), places=5)
                self.assertAlmostEqual(pos[1, feats + k, i, j].item(), trig(x / freq), places=5)


class TestReferencePoints(unittest.TestCase):
    def test_pixel_centres_per_level(self):
        ref = pixel_centre_reference_points([(2, 3), (1, 2)], torch.device("cpu"))
        expected = [
            [1 / 6, 1 / 4],
            [3 / 6, 1 / 4],
            [5 / 6, 1 / 4],
            [1 / 6, 3 / 4],
            [3 / 6, 3 / 4],
            [5 / 6, 3 / 4],
            [1 / 4, 1 / 2],
            [3 / 4, 1 / 2],
        ]
        torch.testing.assert_close(ref, torch.tensor(expected)[None, :, None, :])


if __name__ == "__main__":
    unittest.main()

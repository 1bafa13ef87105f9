"""The masked transformer decoder: shapes, official keys, attention masks, gradients, loading."""

import unittest
from unittest import mock

import torch
from torch import nn

from detectron2.config import get_cfg

from semask_d2 import add_semask_config
from semask_d2.modeling.transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)

from model_fixtures import official_cfg, official_keys


def tiny_decoder(**kwargs):
    args = dict(
        in_channels=16,
        num_classes=3,
        hidden_dim=16,
        num_queries=5,
        nheads=2,
        dim_feedforward=32,
        dec_layers=4,
        pre_norm=False,
        mask_dim=8,
        enforce_input_project=False,
    )
    args.update(kwargs)
    return MultiScaleMaskedTransformerDecoder(**args)


def tiny_inputs(batch=2, channels=16, mask_dim=8):
    # Odd sizes: a 75 x 131 image at strides 32, 16, 8 and 4.
    x = [torch.randn(batch, channels, h, w) for h, w in [(3, 5), (5, 9), (10, 17)]]
    return x, torch.randn(batch, mask_dim, 19, 33)


class TestMultiScaleMaskedTransformerDecoder(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def test_eval_shortcut_gives_the_training_prediction(self):
        # Eval computes intermediate masks only at attention resolution: same final output.
        model = tiny_decoder()
        x, mask_features = tiny_inputs()
        with torch.no_grad():
            train_out = model.train()(x, mask_features)
            eval_out = model.eval()(x, mask_features)
        self.assertNotIn("aux_outputs", eval_out)
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(eval_out[key], train_out[key], rtol=1e-5, atol=1e-5)

    def test_channels_last_mask_features(self):
        # Channels-last mask features, as the pixel decoder makes them, take the oneDNN product
        # in CPU inference: the logits einsum computes with autograd.
        model = tiny_decoder().eval()
        x, mask_features = tiny_inputs()
        mask_features = mask_features.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fast = model(x, mask_features)["pred_masks"]
        plain = model(x, mask_features)["pred_masks"]
        self.assertTrue(plain.requires_grad)
        self.assertGreater(plain.abs().max().item(), 0.1)
        torch.testing.assert_close(fast, plain.detach(), rtol=0, atol=1e-5)

    def test_output_shapes(self):
        model = tiny_decoder()
        x, mask_features = tiny_inputs()
        out = model(x, mask_features)
        self.assertEqual(out["pred_logits"].shape, (2, 5, 4))
        self.assertEqual(out["pred_masks"].shape, (2, 5, 19, 33))
        self.assertEqual(len(out["aux_outputs"]), 4)
        for aux in out["aux_outputs"]:
            self.assertEqual(aux["pred_logits"].shape, (2, 5, 4))
            self.assertEqual(aux["pred_masks"].shape, (2, 5, 19, 33))

    def test_pre_norm_and_mask_only(self):
        model = tiny_decoder(pre_norm=True, mask_classification=False)
        x, mask_features = tiny_inputs(batch=1)
        out = model(x, mask_features)
        self.assertNotIn("pred_logits", out)
        self.assertEqual(out["pred_masks"].shape, (1, 5, 19, 33))
        self.assertFalse(hasattr(model, "class_embed"))

    def test_from_config(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 8
        cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 16
        cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 5
        cfg.MODEL.MASK_FORMER.NHEADS = 2
        cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 32
        cfg.MODEL.MASK_FORMER.DEC_LAYERS = 4
        model = build_transformer_decoder(cfg, in_channels=12)
        self.assertEqual(len(model.transformer_ffn_layers), 3)
        # Input channels differ from the hidden size: 1x1 projections appear.
        self.assertEqual(model.input_proj[0].weight.shape, (16, 12, 1, 1))
        x, mask_features = tiny_inputs(channels=12)
        self.assertEqual(len(model(x, mask_features)["aux_outputs"]), 3)

    def test_official_keys(self):
        cfg = official_cfg()
        with torch.device("meta"):
            model = build_transformer_decoder(cfg, in_channels=256)
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        self.assertEqual(ours, official_keys("sem_seg_head.predictor."))

    def test_attention_mask(self):
        model = tiny_decoder()
        # Image 0: query 0 blocks one key, query 1 blocks all (cleared). Image 1: inverted.
        masks = torch.tensor([[[[1.0, -1.0]], [[-1.0, -2.0]]], [[[-1.0, 1.0]], [[3.0, 0.0]]]])
        attn = model._attention_mask(masks, (1, 2))
        expected = torch.tensor([[[False, True], [False, False]], [[True, False], [False, False]]])
        self.assertEqual(attn.shape, (2 * 2, 2, 2))
        # Batch-major over heads, as nn.MultiheadAttention indexes (B * nheads).
        self.assertTrue(torch.equal(attn, expected.repeat_interleave(2, dim=0)))
        self.assertFalse(attn.requires_grad)

    def test_attention_mask_resizes(self):
        model = tiny_decoder()
        masks = torch.full((1, 1, 4, 4), -1.0)
        masks[..., :2] = 1.0
        attn = model._attention_mask(masks, (2, 2))
        self.assertEqual(attn[0, 0].tolist(), [False, True, False, True])

    def test_fully_masked_rows_attend_everywhere(self):
        model = tiny_decoder()
        # Every mask logit negative: every key would be blocked at every layer.
        final = model.mask_embed.layers[-1]
        nn.init.zeros_(final.weight)
        nn.init.constant_(final.bias, -1.0)
        x, _ = tiny_inputs()
        mask_features = torch.ones(2, 8, 19, 33)
        out = model(x, mask_features)
        self.assertTrue(bool((out["pred_masks"] < 0).all()))
        self.assertTrue(bool(torch.isfinite(out["pred_logits"]).all()))
        # Cleared rows make every layer attend to all keys: same as no mask at all (PyTorch
        # would otherwise return zeros for fully blocked rows, older versions NaN).
        with mock.patch.object(model, "_attention_mask", return_value=None):
            unmasked = model(x, mask_features)
        for pred, ref in zip(out["aux_outputs"] + [out], unmasked["aux_outputs"] + [unmasked]):
            torch.testing.assert_close(pred["pred_logits"], ref["pred_logits"])

    def test_gradients_reach_every_parameter(self):
        model = tiny_decoder(in_channels=12)
        x, mask_features = tiny_inputs(channels=12)
        out = model(x, mask_features)
        loss = 0
        for pred in [out] + out["aux_outputs"]:
            for key in ("pred_logits", "pred_masks"):
                loss = loss + (pred[key] * torch.randn_like(pred[key])).sum()
        loss.backward()
        for name, p in model.named_parameters():
            self.assertIsNotNone(p.grad, name)
            self.assertGreater(p.grad.abs().sum().item(), 0, name)

    def test_loads_static_query(self):
        source = tiny_decoder()
        old = dict(source.state_dict())
        old["static_query.weight"] = old.pop("query_feat.weight")
        # Under a parent module, as in the model (prefix "predictor."), without version metadata.
        parent = nn.Module()
        parent.predictor = tiny_decoder()
        with self.assertLogs("semask_d2", level="WARNING"):
            parent.load_state_dict({"predictor." + k: v for k, v in old.items()})
        self.assertTrue(torch.equal(parent.predictor.query_feat.weight, source.query_feat.weight))

    def test_current_version_round_trip(self):
        source, target = tiny_decoder(), tiny_decoder()
        state = source.state_dict()
        self.assertEqual(state._metadata[""]["version"], 2)
        target.load_state_dict(state)
        self.assertTrue(torch.equal(target.query_feat.weight, source.query_feat.weight))


if __name__ == "__main__":
    unittest.main()

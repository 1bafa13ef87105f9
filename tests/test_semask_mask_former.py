"""SeMask-Mask2Former: official configs and checkpoints, training, inference at odd sizes."""

import os
import tempfile
import unittest
from collections import Counter
from unittest import mock

import detectron2.utils.logger
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from semask_d2.modeling.meta_arch import SeMaskMaskFormer
from semask_d2.modeling.semantic_prior import SemanticPriorLoss
from semask_d2.modeling.test_time_augmentation import SemanticSegmentorWithTTA

from model_fixtures import (
    odd_size_inference_inputs,
    official_cfg,
    official_keys,
    parameters_without_gradient,
    tiny_cfg,
    train_steps,
    training_inputs,
)


def mask2former_cfg(num_classes=4, **mask_former_test):
    cfg = tiny_cfg("mask2former", num_classes=num_classes)
    for key, value in mask_former_test.items():
        cfg.MODEL.MASK_FORMER.TEST[key] = value
    return cfg


class TestOfficialCompatibility(unittest.TestCase):
    def test_official_config_dumps_build_the_official_key_list(self):
        for dataset, params in [("ade20k", 222_632_383), ("cityscapes", 221_843_108)]:
            cfg = official_cfg(f"semask_swinL_mask2former_{dataset}.yaml")
            # Shapes only: the full SeMask-L model without allocating its weights.
            cfg.MODEL.DEVICE = "meta"
            with torch.device("meta"):
                model = build_model(cfg)
            self.assertIsInstance(model, SeMaskMaskFormer)
            ours = {k: list(v.shape) for k, v in model.state_dict().items()}
            self.assertEqual(ours, official_keys(name=f"semask_swinL_mask2former_{dataset}.txt"))
            # 222M, as in the official README's results table.
            self.assertEqual(sum(p.numel() for p in model.parameters()), params)

    def test_deformable_attention_heads_follow_mask_former_nheads(self):
        # The official code takes these heads from MODEL.MASK_FORMER.NHEADS and hard-codes 4
        # points; the dump still says DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS: 8.
        cfg = official_cfg("semask_swinL_mask2former_ade20k.yaml")
        self.assertEqual(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS, 8)
        cfg.MODEL.MASK_FORMER.NHEADS = 4
        # A small backbone keeps the test fast; the head is the official one.
        cfg.MODEL.SWIN.EMBED_DIM = 16
        cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
        cfg.MODEL.SWIN.NUM_HEADS = [1, 1, 1, 1]
        cfg.MODEL.DEVICE = "cpu"
        with (
            mock.patch.object(detectron2.utils.logger, "_LOG_COUNTER", Counter()),
            self.assertLogs("semask_d2", level="WARNING") as logs,
        ):
            source = build_model(cfg)
            target = build_model(cfg)
        warnings = [line for line in logs.output if "N_HEADS = 8 is not read" in line]
        self.assertEqual(len(warnings), 1, logs.output)
        attention = source.sem_seg_head.pixel_decoder.transformer.encoder.layers[0].self_attn
        # 4 heads x 3 levels x 4 points (x 2 offsets), on 256 channels.
        self.assertEqual(list(attention.sampling_offsets.weight.shape), [96, 256])
        self.assertEqual(list(attention.attention_weights.weight.shape), [48, 256])
        ffn = source.sem_seg_head.pixel_decoder.transformer.encoder.layers[0].linear1
        self.assertEqual(list(ffn.weight.shape), [1024, 256])
        with tempfile.TemporaryDirectory() as tmp:
            DetectionCheckpointer(source, save_dir=tmp).save("model_final")
            loaded = torch.load(os.path.join(tmp, "model_final.pth"), weights_only=True)
        incompatible = DetectionCheckpointer(target)._load_model(loaded)
        self.assertEqual((incompatible.missing_keys, incompatible.unexpected_keys), ([], []))
        for key, value in target.state_dict().items():
            self.assertTrue(torch.equal(value, source.state_dict()[key]), key)

    def test_checkpoint_round_trip_with_module_versions(self):
        torch.manual_seed(0)
        source = build_model(mask2former_cfg())
        state = source.state_dict()
        # As torch.save stores an official state dict: module-version metadata per prefix.
        self.assertEqual(state._metadata["sem_seg_head.predictor"]["version"], 2)
        # An older official file named the content queries `static_query`.
        legacy = type(state)(
            (k.replace("predictor.query_feat.", "predictor.static_query."), v)
            for k, v in state.items()
        )
        legacy._metadata = type(state._metadata)(state._metadata)
        legacy._metadata["sem_seg_head.predictor"] = {"version": 1}
        for name, checkpoint in [("current", state), ("legacy", legacy)]:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model_final.pth")
                torch.save({"model": checkpoint, "iteration": 10}, path)
                target = build_model(mask2former_cfg())
                loaded = torch.load(path, weights_only=True)
                incompatible = DetectionCheckpointer(target)._load_model(loaded)
            self.assertEqual(incompatible.missing_keys, [], name)
            self.assertEqual(incompatible.unexpected_keys, [], name)
            for key, value in target.state_dict().items():
                self.assertTrue(torch.equal(value, state[key]), f"{name}: {key}")


class TestTraining(unittest.TestCase):
    def test_losses_and_prior_loss_value(self):
        torch.manual_seed(0)
        cfg = mask2former_cfg()
        model = build_model(cfg).train()
        inputs = training_inputs(4, sizes=((64, 64), (45, 71)))
        captured = {}
        model.backbone.register_forward_hook(lambda m, i, out: captured.update(out))
        with EventStorage():
            losses = model(inputs)
        self.assertEqual(len(losses), 3 * 3 + 1)
        # loss_cate: the shared prior loss on the labels padded to the 64 x 96 batch.
        padded = torch.full((2, 64, 96), 255)
        padded[0, :64, :64] = inputs[0]["sem_seg"]
        padded[1, :45, :71] = inputs[1]["sem_seg"]
        prior = SemanticPriorLoss(cfg, model.backbone.output_shape()).train()
        expected = prior(captured, padded)["loss_cate"]
        torch.testing.assert_close(losses["loss_cate"], expected)
        # The criterion's losses arrive weighted: loss_mask by MASK_WEIGHT 5.
        self.assertNotIn("loss_cate", model.criterion.weight_dict)

    def test_short_training_run_loss_goes_down(self):
        torch.manual_seed(0)
        model = build_model(mask2former_cfg()).train()
        totals = list(train_steps(model, training_inputs(4, sizes=((48, 48), (48, 64))), 12))
        self.assertLess(sum(totals[-3:]) / 3, 0.9 * sum(totals[:3]) / 3, totals)

    def test_every_parameter_learns_after_one_step(self):
        torch.manual_seed(0)
        cfg = mask2former_cfg()
        # Stochastic depth may drop a whole branch for the batch: off for this check.
        cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
        model = build_model(cfg).train()
        list(train_steps(model, training_inputs(4), 2))
        self.assertEqual(parameters_without_gradient(model), [])


class TestInference(unittest.TestCase):
    def test_odd_sizes_all_outputs(self):
        torch.manual_seed(0)
        model = build_model(mask2former_cfg(PANOPTIC_ON=True, INSTANCE_ON=True)).eval()
        with torch.no_grad():
            outputs = model(odd_size_inference_inputs())
        self.assertEqual(tuple(outputs[0]["sem_seg"].shape), (4, 90, 142))
        self.assertEqual(tuple(outputs[1]["sem_seg"].shape), (4, 61, 33))
        # Semantic scores are sums of class probabilities times mask probabilities.
        self.assertTrue(torch.all(outputs[0]["sem_seg"] >= 0))
        panoptic, segments = outputs[0]["panoptic_seg"]
        self.assertEqual(tuple(panoptic.shape), (90, 142))
        self.assertEqual(outputs[1]["instances"].image_size, (61, 33))

    def test_no_prior_decoding_at_inference(self):
        model = build_model(mask2former_cfg()).eval()
        with (
            mock.patch.object(SemanticPriorLoss, "decode_finest") as decode,
            torch.no_grad(),
        ):
            model([{"image": torch.rand(3, 40, 40) * 255}])
        self.assertEqual(decode.call_count, 0)
        # The same spy counts the decoding in training.
        with mock.patch.object(
            SemanticPriorLoss, "decode_finest", wraps=model.prior_loss.decode_finest
        ) as decode:
            model.train()
            with EventStorage():
                model(training_inputs(4, sizes=((64, 64),)))
        self.assertEqual(decode.call_count, 1)

    def test_thing_classes_come_from_the_first_training_set(self):
        # As the official code: panoptic/instance thing ids from DATASETS.TRAIN[0].
        names = {"semask_test_things_train": {3: 1, 7: 2}, "semask_test_things_val": {5: 0}}
        try:
            for name, things in names.items():
                MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id = things
            cfg = mask2former_cfg()
            cfg.DATASETS.TRAIN = ("semask_test_things_train",)
            cfg.DATASETS.TEST = ("semask_test_things_val",)
            self.assertEqual(build_model(cfg).thing_ids, [1, 2])
        finally:
            for name in names:
                MetadataCatalog.remove(name)


class TestTestTimeAugmentation(unittest.TestCase):
    def test_multi_scale_flip_averages_mask_former_scores(self):
        torch.manual_seed(0)
        cfg = mask2former_cfg()
        cfg.merge_from_list(
            ["TEST.AUG.MIN_SIZES", [40], "TEST.AUG.MAX_SIZE", 400, "TEST.AUG.FLIP", True]
        )
        self.assertFalse(cfg.TEST.AUG.SOFTMAX)  # Mask2Former scores are probabilities already
        model = build_model(cfg).eval()
        tta = SemanticSegmentorWithTTA(cfg, model)
        image = (torch.rand(3, 40, 56) * 255).to(torch.uint8)
        with torch.no_grad():
            (merged,) = tta([{"image": image, "height": 40, "width": 56}])
            plain = model([{"image": image.float(), "height": 40, "width": 56}])[0]["sem_seg"]
            flipped = model([{"image": image.flip(-1).float(), "height": 40, "width": 56}])[0][
                "sem_seg"
            ]
        # One scale (the input size) and its flip: the mean of the two views, flipped back.
        torch.testing.assert_close(
            merged["sem_seg"], (plain + flipped.flip(-1)) / 2, rtol=1e-4, atol=1e-5
        )

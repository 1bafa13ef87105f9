"""The head-family dispatch rule on every released family's config dump."""

import unittest

import torch

from detectron2.modeling import build_backbone

from semask_d2.modeling.criterion import SetCriterion
from semask_d2.modeling.head_family import (
    HEAD_FAMILIES,
    StageRule,
    find_head_family,
    head_family,
    sem_windowed_from_config,
)
from semask_d2.modeling.mask_former_criterion import MaskFormerSetCriterion
from semask_d2.modeling.pixel_decoder import PIXEL_DECODER_REGISTRY
from semask_d2.modeling.transformer_decoder import TRANSFORMER_DECODER_REGISTRY

from model_fixtures import official_cfg

W, G = True, False
# Official dump -> (family, predictor, criterion, stage rule with its own classes, with 19).
DUMPS = {
    "semask_swinL_maskformer_ade20k.yaml": (
        "MaskFormer",
        "TransformerPredictor",
        MaskFormerSetCriterion,
        [W, W, W, G],
        [W, W, W, G],
    ),
    "semask_swinL_mask2former_ade20k.yaml": (
        "Mask2Former",
        "MultiScaleMaskedTransformerDecoder",
        SetCriterion,
        [W, W, W, G],
        [W, W, W, W],
    ),
    "semask_swinL_mask2former_cityscapes.yaml": (
        "Mask2Former",
        "MultiScaleMaskedTransformerDecoder",
        SetCriterion,
        [W, W, W, W],
        [W, W, W, W],
    ),
    "semask_swinL_fapn_mask2former_ade20k.yaml": (
        "FaPN",
        "MultiScaleMaskedTransformerDecoder",
        SetCriterion,
        [W, W, G, G],
        [W, W, G, G],
    ),
    "semask_swinL_msfapn_mask2former_ade20k.yaml": (
        "MSFaPN",
        "MultiScaleMaskedTransformerDecoder",
        SetCriterion,
        [W, W, G, G],
        [W, W, G, G],
    ),
}


class TestHeadFamilies(unittest.TestCase):
    def test_each_official_dump(self):
        for name, (family, predictor, criterion, stages, stages_19) in DUMPS.items():
            with self.subTest(dump=name):
                cfg = official_cfg(name)
                # None of them states the rule: it is the family's.
                self.assertEqual(cfg.MODEL.SWIN.SEM_WINDOWED, [])
                found = head_family(cfg)
                self.assertEqual(found.name, family)
                self.assertEqual(found.predictor, predictor)
                self.assertIs(found.criterion, criterion)
                num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
                self.assertEqual(sem_windowed_from_config(cfg, num_classes), stages)
                self.assertEqual(sem_windowed_from_config(cfg, 19), stages_19)

    def test_the_backbone_applies_the_rule(self):
        # FaPN's pixel decoder is tested elsewhere; the backbone alone shows the rule here.
        for name in (
            "semask_swinL_maskformer_ade20k.yaml",
            "semask_swinL_fapn_mask2former_ade20k.yaml",
        ):
            with self.subTest(dump=name):
                cfg = official_cfg(name)
                cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
                with torch.device("meta"):
                    backbone = build_backbone(cfg)
                windowed = [s.semantic_layer.windowed for s in backbone.layers]
                self.assertEqual(windowed, DUMPS[name][4])

    def test_stated_rule_always_wins(self):
        stated = [G, W, G, W]
        for name in DUMPS:
            with self.subTest(dump=name):
                cfg = official_cfg(name)
                cfg.MODEL.SWIN.SEM_WINDOWED = stated
                self.assertEqual(sem_windowed_from_config(cfg, 150), stated)

    def test_other_heads_keep_the_backbone_default(self):
        cfg = official_cfg("semask_swinL_maskformer_ade20k.yaml")
        cfg.MODEL.SEM_SEG_HEAD.NAME = "SeMaskFPNHead"
        self.assertIsNone(sem_windowed_from_config(cfg, 150))

    def test_maskformer_with_its_predictor_stated(self):
        cfg = official_cfg("semask_swinL_maskformer_ade20k.yaml")
        cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "TransformerPredictor"
        self.assertEqual(head_family(cfg).name, "MaskFormer")

    def test_unknown_combinations_name_the_keys_in_one_line(self):
        for key, value in [
            ("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "res5"),
            ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "BasePixelDecoder"),
            ("MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "TransformerPredictor"),
        ]:
            with self.subTest(key=key):
                cfg = official_cfg("semask_swinL_mask2former_ade20k.yaml")
                cfg.merge_from_list([key, value])
                self.assertIsNone(find_head_family(cfg))
                with self.assertRaises(ValueError) as ctx:
                    head_family(cfg)
                message = str(ctx.exception)
                self.assertNotIn("\n", message)
                for name in (
                    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE",
                    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME",
                    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
                ):
                    self.assertIn(name, message)
                self.assertIn(repr(value), message)
                # The backbone refuses too, unless the rule is stated.
                with self.assertRaises(ValueError):
                    sem_windowed_from_config(cfg, 150)
                cfg.MODEL.SWIN.SEM_WINDOWED = [W, W, W, G]
                self.assertEqual(sem_windowed_from_config(cfg, 150), [W, W, W, G])

    def test_rows_are_distinct_and_name_registered_modules(self):
        keys = [
            (f.transformer_in_feature, f.pixel_decoder, d)
            for f in HEAD_FAMILIES
            for d in f.transformer_decoders
        ]
        self.assertEqual(len(keys), len(set(keys)))
        for family in HEAD_FAMILIES:
            with self.subTest(family=family.name):
                self.assertIn(family.pixel_decoder, PIXEL_DECODER_REGISTRY)
                self.assertIn(family.predictor, TRANSFORMER_DECODER_REGISTRY)
                self.assertIn(family.predictor, family.transformer_decoders)

    def test_stage_rules(self):
        cases = [
            (StageRule(global_stages=1), 19, 4, [W, W, W, G]),
            (StageRule(global_stages=2), 150, 4, [W, W, G, G]),
            (StageRule(global_stages=1, only_with_num_classes=150), 150, 4, [W, W, W, G]),
            (StageRule(global_stages=1, only_with_num_classes=150), 171, 4, [W, W, W, W]),
            (StageRule(global_stages=2), 5, 3, [W, G, G]),
            (StageRule(global_stages=2), 5, 1, [G]),
        ]
        for rule, num_classes, num_stages, expected in cases:
            with self.subTest(rule=rule, num_classes=num_classes, num_stages=num_stages):
                self.assertEqual(rule.windowed(num_classes, num_stages), expected)


if __name__ == "__main__":
    unittest.main()

"""Config keys: official SeMask YAML files keep their meaning and types in our config."""

import os
import re
import unittest

import torch
import yaml

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_backbone

from semask_d2 import add_semask_config

OFFICIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_configs")
FILES = ["semask_swinL_mask2former_ade20k.yaml", "semask_swinL_mask2former_cityscapes.yaml"]


def load_official(name):
    with open(os.path.join(OFFICIAL, name)) as f:
        return yaml.safe_load(f)


class TestSwinKeys(unittest.TestCase):
    def test_every_official_swin_key_exists_with_its_type(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        for name in FILES:
            swin = load_official(name)["MODEL"]["SWIN"]
            for key, value in swin.items():
                self.assertIn(key, cfg.MODEL.SWIN, f"{name}: MODEL.SWIN.{key}")
                ours = cfg.MODEL.SWIN[key]
                if value is not None and ours is not None:
                    self.assertIs(type(ours), type(value), f"MODEL.SWIN.{key}")

    def test_official_swin_and_classes_merge_and_build(self):
        for name, num_classes, windowed in [
            (FILES[0], 150, [True, True, True, False]),
            (FILES[1], 19, [True] * 4),
        ]:
            cfg = get_cfg()
            add_semask_config(cfg)
            official = load_official(name)["MODEL"]
            cfg.merge_from_other_cfg(
                CfgNode(
                    {
                        "MODEL": {
                            "SWIN": official["SWIN"],
                            "BACKBONE": {"NAME": official["BACKBONE"]["NAME"]},
                            "SEM_SEG_HEAD": {
                                "NUM_CLASSES": official["SEM_SEG_HEAD"]["NUM_CLASSES"]
                            },
                            "MASK_FORMER": {"CATE_WEIGHT": official["MASK_FORMER"]["CATE_WEIGHT"]},
                        }
                    }
                )
            )
            # Shapes only: the SeMask-L of the official file, built without allocating weights.
            with torch.device("meta"):
                model = build_backbone(cfg)
            self.assertEqual(model.num_classes, num_classes)
            self.assertEqual([s.semantic_layer.windowed for s in model.layers], windowed)
            self.assertEqual(
                model.layers[0].semantic_layer.window_size, official["SWIN"]["SEM_WINDOW_SIZE"]
            )
            self.assertEqual(model.layers[0].window_size, 12)

    def test_new_keys_have_documented_defaults(self):
        cfg = get_cfg()
        add_semask_config(cfg)
        self.assertEqual(cfg.MODEL.SWIN.SEM_WINDOWED, [])
        self.assertEqual(cfg.MODEL.SWIN.SEM_INIT, "mmseg")
        self.assertEqual(cfg.MODEL.SWIN.SEM_DROPOUT, 0.1)
        self.assertEqual(cfg.MODEL.MASK_FORMER.CATE_WEIGHT, 0.4)
        source = open(
            os.path.join(os.path.dirname(__file__), "..", "semask_d2", "config.py")
        ).read()
        lines = source.splitlines()
        assignment = re.compile(r"^\s+[a-z_]+(\.[A-Z0-9_]+)+ = ")
        for i, line in enumerate(lines):
            if assignment.match(line) and "CN()" not in line:
                self.assertTrue(
                    lines[i - 1].strip().startswith("#"), f"undocumented: {line.strip()}"
                )

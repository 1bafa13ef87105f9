"""
Tests for ``tools/convert_semask_fpn_mmseg.py`` on synthetic mmseg SeMask-FPN checkpoints.

Each of the 12 released SeMask-FPN models gets a checkpoint with the keys and shapes of its
official key list (``tests/data/official_keys/semask_fpn_mmseg_*.txt``) plus mmcv ``meta``. To
keep the full-size files small, every tensor is one distinct value broadcast to its shape (a
storage of one element); the converted weights must then match the model built from the shipped
config (plus the printed overrides) key for key and shape for shape, on the meta device, and
carry each source value under its mapped name. SeMask-T ADE20K also gets real random tensors,
converted to ``.pkl`` and loaded strictly into a real model, tensor by tensor.
"""

import contextlib
import io
import os
import re
import tempfile
import unittest

import torch

from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from semask_d2 import add_semask_config
from semask_d2.engine import StrictCheckpointer
from semask_d2.modeling.backbone.swin_blocks import relative_position_index

from model_fixtures import CONFIG_DIR, official_keys
from script_loader import load_script

tool = load_script("tools/convert_semask_fpn_mmseg.py")

SIZES = {"T": "tiny", "S": "small", "B": "base", "L": "large"}
DATASETS = {
    "ade20k": ("ade20k", "bs16"),
    "cityscapes": ("cityscapes", "bs8"),
    "coco_stuff10k": ("coco-stuff-10k", "bs16"),
}
# Parameters of the official mmseg models (counted by building the official model classes):
# T 35M, S 56M, B 96M, L 211M as in the README.
OFFICIAL_PARAMS = {
    ("ade20k", "T"): 34_655_748,
    ("ade20k", "S"): 55_973_652,
    ("ade20k", "B"): 96_485_826,
    ("ade20k", "L"): 210_791_934,
    ("cityscapes", "T"): 34_243_753,
    ("cityscapes", "S"): 55_561_657,
    ("cityscapes", "B"): 95_948_071,
    ("cityscapes", "L"): 210_002_659,
    ("coco_stuff10k", "T"): 34_661_145,
    ("coco_stuff10k", "S"): 55_979_049,
    ("coco_stuff10k", "B"): 96_491_223,
    ("coco_stuff10k", "L"): 210_797_331,
}
META = {"CLASSES": ("wall", "building"), "PALETTE": [[120, 120, 120], [180, 120, 120]]}


def key_list(dataset, size):
    return official_keys(name=f"semask_fpn_mmseg_{dataset}_swin{size}.txt")


def config_path(dataset, size):
    folder, batch = DATASETS[dataset]
    return os.path.join(
        CONFIG_DIR,
        folder,
        "semantic-segmentation/semask_fpn",
        f"semask_fpn_swin_{SIZES[size]}_{batch}_80k.yaml",
    )


def load_cfg(dataset, size, overrides=()):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(config_path(dataset, size))
    cfg.merge_from_list(list(overrides))
    return cfg


def mmseg_state_dict(keys, make):
    """
    Args:
        keys (dict[str, list[int]]): official keys and shapes.
        make (callable): (position of the key, shape) -> float tensor.
    Returns:
        dict[str, Tensor]: the state dict, with the standard Swin index and BN counters as int64.
    """
    window = {}
    sd = {}
    for n, (key, shape) in enumerate(keys.items()):
        if key.endswith("relative_position_bias_table"):
            window[key.rsplit(".", 2)[0]] = (int(shape[0] ** 0.5) + 1) // 2
        if key.endswith("relative_position_index"):
            sd[key] = relative_position_index(window[key.rsplit(".", 2)[0]])
        elif key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(n, dtype=torch.long)
        else:
            sd[key] = make(n, shape)
    return sd


def broadcast_value(n, shape):
    """One distinct value per key, stored once: a full-size tensor in a few bytes."""
    return torch.tensor(float(n)).expand(shape)


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool.main(argv)
    return code, out.getvalue(), err.getvalue()


def target_name(key):
    """The expected name of a source key, written independently of the tool's table."""
    m = re.fullmatch(r"decode_head\.scale_heads\.(\d)\.(\d)\.(conv|bn)\.(.+)", key)
    if m:
        level, pos, module, param = m.groups()
        norm = "" if module == "conv" else "norm."
        return f"sem_seg_head.res{int(level) + 2}.{pos}.{norm}{param}"
    return key.replace("decode_head.conv_seg.", "sem_seg_head.predictor.")


class TestConvertSeMaskFPN(unittest.TestCase):
    def convert(self, tmp, sd, output="out.pth", meta=META):
        src, dst = os.path.join(tmp, "in.pth"), os.path.join(tmp, output)
        torch.save({"meta": meta, "state_dict": sd}, src)
        code, out, err = run_main([src, dst])
        return code, out, err, dst

    def test_every_released_model_converts_to_its_config(self):
        for dataset, folder in DATASETS.items():
            for size in SIZES:
                with self.subTest(dataset=dataset, size=size), tempfile.TemporaryDirectory() as d:
                    sd = mmseg_state_dict(key_list(dataset, size), broadcast_value)
                    code, out, err, dst = self.convert(d, sd)
                    self.assertEqual((code, err), (0, ""))
                    lines = out.splitlines()
                    params = OFFICIAL_PARAMS[(dataset, size)]
                    self.assertIn(f"({params:,} parameters)", lines[1])
                    overrides = lines[2].split(": ", 1)[1]
                    if dataset == "coco_stuff10k":
                        self.assertEqual(overrides, "MODEL.SWIN.NUM_PRIOR_CLASSES 150")
                    else:
                        self.assertEqual(overrides, "none")
                    converted = torch.load(dst, weights_only=True)
                    self.assertFalse(converted["matching_heuristics"])
                    weights = converted["model"]

                    cfg = load_cfg(dataset, size, [] if overrides == "none" else overrides.split())
                    with torch.device("meta"):
                        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
                    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
                    self.assertEqual({k: list(v.shape) for k, v in weights.items()}, shapes)
                    self.assertEqual(sum(p.numel() for p in model.parameters()), params)
                    for key, value in sd.items():
                        self.assertTrue(torch.equal(weights[target_name(key)], value), key)

    def test_tiny_ade20k_loads_strictly_tensor_by_tensor(self):
        gen = torch.Generator().manual_seed(0)
        sd = mmseg_state_dict(
            key_list("ade20k", "T"), lambda n, shape: torch.randn(shape, generator=gen)
        )
        with tempfile.TemporaryDirectory() as d:
            code, out, err, dst = self.convert(d, sd, output="semask_fpn_T.pkl")
            self.assertEqual((code, err), (0, ""), out)
            model = build_model(load_cfg("ade20k", "T", ["MODEL.DEVICE", "cpu"]))
            StrictCheckpointer(model).load(dst)
        ours = model.state_dict()
        self.assertEqual(len(ours), len(sd))
        for key, value in sd.items():
            self.assertTrue(torch.equal(ours[target_name(key)], value), key)
        self.assertEqual(model.sem_seg_head.predictor.out_channels, 150)
        self.assertEqual(model.backbone.num_classes, 150)

    def assert_rejected(self, code, out, err, dst, *fragments):
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("error: "), err)
        for fragment in fragments:
            self.assertIn(fragment, err)
        self.assertFalse(os.path.exists(dst))

    def test_rejected_inputs_give_one_line(self):
        base = mmseg_state_dict(key_list("ade20k", "T"), broadcast_value)
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "random.pth"), os.path.join(d, "out.pkl")
            with open(src, "wb") as f:
                f.write(os.urandom(1000))
            self.assert_rejected(*run_main([src, dst]), dst, "cannot read", src)

            torch.save({"meta": META}, src)
            self.assert_rejected(*run_main([src, dst]), dst, "no 'state_dict'", "['meta']")

            extra = dict(base, **{"decode_head.conv_seg2.weight": torch.zeros(1)})
            self.assert_rejected(
                *self.convert(d, extra, "out.pkl"), "1 unexpected", "decode_head.conv_seg2.weight"
            )

            wrong = dict(base, **{"decode_head.scale_heads.2.2.conv.weight": torch.zeros(3)})
            self.assert_rejected(
                *self.convert(d, wrong, "out.pkl"),
                "1 wrong shape",
                "decode_head.scale_heads.2.2.conv.weight [3] (expected [256, 256, 3, 3])",
            )

            missing = dict(base)
            del missing["decode_head.scale_heads.3.4.bn.running_var"]
            self.assert_rejected(
                *self.convert(d, missing, "out.pkl"),
                "1 missing",
                "decode_head.scale_heads.3.4.bn.running_var",
            )

            index = "backbone.layers.1.blocks.0.attn.relative_position_index"
            shuffled = dict(base, **{index: base[index].flip(0)})
            self.assert_rejected(
                *self.convert(d, shuffled, "out.pkl"), index, "standard Swin index"
            )


if __name__ == "__main__":
    unittest.main()

"""Shared test helpers: tiny CPU versions of the shipped configs, mapper-like inputs, and the
official state-dict key lists of ``tests/data/official_keys`` (see ``tests/data/README.md``)."""

import os

import torch

from detectron2.structures import Instances

# Key lists and config dumps of the released official SeMask models (tests/data/README.md).
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def official_keys(prefix="", name="semask_swinL_mask2former_ade20k.txt"):
    """
    Returns:
        dict[str, list[int]]: the official keys starting with `prefix` (prefix removed), in file
        order, mapped to their shapes.
    """
    keys = {}
    with open(os.path.join(DATA_DIR, "official_keys", name)) as f:
        for line in f:
            key, shape = line.rstrip("\n").split("\t")
            if key.startswith(prefix):
                keys[key[len(prefix) :]] = [
                    int(s) for s in shape.strip("[]").split(",") if s.strip()
                ]
    return keys


def shrink(cfg):
    """Tiny CPU overrides; the recipe's classes and windowed lists stay."""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.SWIN.WINDOW_SIZE = 4
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 4
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    if cfg.MODEL.META_ARCHITECTURE == "SeMaskMaskFormer":
        cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
        cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
        cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 2
        cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 64
        cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
        cfg.MODEL.MASK_FORMER.NHEADS = 2
        cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
        cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 6
        cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
        cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 64
    else:
        # The recipes use SyncBN (mmseg); BN keeps the test independent of any process group.
        cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    return cfg


def training_inputs(num_classes, sizes=((64, 64), (45, 71))):
    """Images (one of odd size by default) with labels and per-class masks, as the mapper emits."""
    inputs = []
    for h, w in sizes:
        sem_seg = torch.randint(0, num_classes, (h, w))
        classes = torch.unique(sem_seg)
        instances = Instances((h, w))
        instances.gt_classes = classes
        instances.gt_masks = sem_seg[None] == classes[:, None, None]
        inputs.append(
            {"image": torch.rand(3, h, w) * 255, "sem_seg": sem_seg, "instances": instances}
        )
    return inputs

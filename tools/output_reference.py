"""
Freeze what the models compute, so that speed and memory work can prove it changes nothing.

    python tools/output_reference.py write tests/data/output_reference.pt
    python tools/output_reference.py check tests/data/output_reference.pt

``write`` builds small SeMask-T FPN and SeMask-T Mask2Former models (the shipped ADE20K configs
with fewer channels and blocks, so that the file stays small), draws their weights and a batch
with fixed seeds, and stores config, weights, batch, inference outputs and training losses (the
prior loss ``loss_cate`` included). ``check`` rebuilds every model from the stored config and
weights, recomputes both, and prints the largest absolute difference per model; it exits 1 when
one exceeds the tolerance (1e-5). ``tests/test_output_reference.py`` runs the same comparison.
"""

import argparse
import os
import sys
from typing import Dict, List

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
NUM_CLASSES = 5
IMAGE_SIZES = ((64, 64), (45, 71))
# Shipped configs and the keys that shrink them (window 4 so that 45x71 needs window padding).
# SyncBN of the FPN recipe needs a process group; BN computes the same in one process.
MODELS = {
    "semask_t_fpn": (
        "configs/ade20k/semantic-segmentation/semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml",
        {"MODEL.SEM_SEG_HEAD.NORM": "BN"},
    ),
    "semask_t_mask2former": (
        "configs/ade20k/semantic-segmentation/semask_mask2former/"
        "maskformer2_semask_swin_tiny_bs16_160k.yaml",
        {},
    ),
}
SMALL = {
    "MODEL.DEVICE": "cpu",
    "MODEL.SWIN.EMBED_DIM": 8,
    "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
    "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4],
    "MODEL.SWIN.WINDOW_SIZE": 4,
    "MODEL.SWIN.SEM_WINDOW_SIZE": 4,
    "MODEL.SWIN.DROP_PATH_RATE": 0.0,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": NUM_CLASSES,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 2,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
    "MODEL.MASK_FORMER.NHEADS": 2,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 6,
    "MODEL.MASK_FORMER.DEC_LAYERS": 3,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 64,
}


def small_cfg(config_file: str, extra: Dict[str, object]):
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list([str(x) for item in {**SMALL, **extra}.items() for x in item])
    cfg.DATASETS.TEST = ()
    return cfg


def fixed_batch(seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    """Images and labels (an ignored stripe included) drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in IMAGE_SIZES:
        sem_seg = torch.randint(0, NUM_CLASSES, (h, w), generator=gen)
        sem_seg[:, :3] = 255
        image = torch.randint(0, 256, (3, h, w), generator=gen).float()
        batch.append({"image": image, "sem_seg": sem_seg})
    return batch


def with_instances(batch: List[Dict[str, torch.Tensor]]) -> List[Dict]:
    """The batch plus per-class masks, as the training mappers emit them."""
    result = []
    for x in batch:
        sem_seg = x["sem_seg"]
        classes = torch.unique(sem_seg[sem_seg != 255])
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = classes
        instances.gt_masks = sem_seg[None] == classes[:, None, None]
        result.append({**x, "instances": instances})
    return result


def compute(model, batch: List[Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
    """
    Returns:
        dict: "sem_seg" (per image, the (K, H, W) inference output) and "losses" (the training
        losses on the batch, sampling seeded so that point sampling and dropout repeat).
    """
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"]} for x in batch])
    model.train()
    torch.manual_seed(7)
    with EventStorage():
        losses = model(with_instances(batch))
    return {
        "sem_seg": {str(i): o["sem_seg"] for i, o in enumerate(outputs)},
        "losses": {k: v.detach() for k, v in losses.items()},
    }


def build_reference() -> Dict:
    reference = {}
    for name, (config_file, extra) in MODELS.items():
        cfg = small_cfg(config_file, extra)
        torch.manual_seed(0)
        model = build_model(cfg)
        batch = fixed_batch()
        reference[name] = {
            "config": cfg.dump(),
            # Copies: the training forward updates batch-norm statistics in place.
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "batch": batch,
            **compute(model, batch),
        }
    return reference


def rebuild(entry: Dict):
    """The model of a reference entry: its config, its weights loaded strictly."""
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_other_cfg(cfg.load_cfg(entry["config"]))
    model = build_model(cfg)
    model.load_state_dict(entry["weights"], strict=True)
    return model


def max_differences(reference: Dict) -> Dict[str, float]:
    """Per model, the largest absolute difference of outputs and losses to the reference."""
    result = {}
    for name, entry in reference.items():
        got = compute(rebuild(entry), entry["batch"])
        diffs = [0.0]
        for part in ("sem_seg", "losses"):
            if set(got[part]) != set(entry[part]):
                raise ValueError(
                    f"{name}: {part} keys {sorted(got[part])} != {sorted(entry[part])}"
                )
            for key, want in entry[part].items():
                diffs.append((got[part][key].double() - want.double()).abs().max().item())
        result[name] = max(diffs)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("path", help="the reference file (.pt)")
    args = parser.parse_args(argv)
    if args.action == "write":
        torch.save(build_reference(), args.path)
        print(f"wrote {args.path} ({os.path.getsize(args.path) / 1e6:.2f} MB)")
        return 0
    if not os.path.isfile(args.path):
        print(f"error: no reference file {args.path}; create it with 'write'", file=sys.stderr)
        return 1
    reference = torch.load(args.path, weights_only=True)
    failed = False
    for name, diff in max_differences(reference).items():
        print(f"{name}: max |difference| {diff:.3g}")
        failed |= diff > TOLERANCE
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())

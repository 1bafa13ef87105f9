"""Shared test helpers: tiny CPU versions of the shipped configs, mapper-like inputs, short
training runs, and the official state-dict key lists of ``tests/data/official_keys`` (see
``tests/data/README.md``)."""

import os
from typing import Callable, Dict, Iterator, List, Optional, Union

import torch
import yaml

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from semask_d2 import add_semask_config

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


CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
# The SeMask-T configs the tiny test models start from, by model family.
TINY_CONFIGS = {
    "fpn": "ade20k/semantic-segmentation/semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml",
    "mask2former": "ade20k/semantic-segmentation/semask_mask2former/"
    "maskformer2_semask_swin_tiny_bs16_160k.yaml",
    "maskformer": "ade20k/semantic-segmentation/semask_maskformer/"
    "maskformer_semask_swin_tiny_bs16_160k.yaml",
    **{
        family: f"ade20k/semantic-segmentation/semask_{family}/"
        f"{family}_maskformer2_semask_swin_tiny_bs16_160k.yaml"
        for family in ("fapn", "msfapn")
    },
}


def tiny_overrides(meta_architecture: str) -> Dict[str, object]:
    """
    The config keys (dotted) and values that shrink a shipped SeMask config of
    `meta_architecture` to a tiny CPU model; the recipe's classes and windowed lists stay.
    """
    overrides = {
        "MODEL.DEVICE": "cpu",
        "MODEL.SWIN.EMBED_DIM": 16,
        "MODEL.SWIN.DEPTHS": [1, 1, 2, 1],
        "MODEL.SWIN.NUM_HEADS": [1, 2, 2, 4],
        "MODEL.SWIN.WINDOW_SIZE": 4,
        "MODEL.SWIN.SEM_WINDOW_SIZE": 4,
        # No stochastic depth: with 2 images a dropped block could leave a parameter unused.
        "MODEL.SWIN.DROP_PATH_RATE": 0.0,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
    }
    if meta_architecture == "SeMaskMaskFormer":
        overrides.update(
            {
                "MODEL.SEM_SEG_HEAD.MASK_DIM": 32,
                "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 1,
                "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": 64,
                "MODEL.MASK_FORMER.HIDDEN_DIM": 32,
                # Also the deformable attention's heads, as in the official code.
                "MODEL.MASK_FORMER.NHEADS": 2,
                "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 64,
                "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 6,
                "MODEL.MASK_FORMER.DEC_LAYERS": 3,
                "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 64,
            }
        )
    else:
        # The recipes use SyncBN (mmseg); BN keeps the test independent of any process group.
        overrides["MODEL.SEM_SEG_HEAD.NORM"] = "BN"
    return overrides


def tiny_opts(meta_architecture: str) -> List[str]:
    """:func:`tiny_overrides` as command-line ``KEY VALUE`` strings."""
    return [str(x) for item in tiny_overrides(meta_architecture).items() for x in item]


def write_tiny_config(path: str, base: str, extra: Optional[Dict] = None) -> str:
    """
    Write a YAML file at `path`: `base` (a shipped config) shrunk by :func:`tiny_overrides`,
    then the nested `extra` keys. Returns `path`.
    """
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(base)
    tree = {}
    for key, value in tiny_overrides(cfg.MODEL.META_ARCHITECTURE).items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    _merge_nested(tree, extra or {})
    with open(path, "w") as f:
        yaml.safe_dump({"_BASE_": base, **tree}, f)
    return path


def _merge_nested(into: Dict, extra: Dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_nested(into[key], value)
        else:
            into[key] = value


def shrink(cfg):
    """Apply :func:`tiny_overrides` to `cfg` in place; returns it."""
    cfg.merge_from_list(tiny_opts(cfg.MODEL.META_ARCHITECTURE))
    return cfg


def tiny_cfg(family="mask2former", num_classes=4):
    """
    The shipped SeMask-T config of `family` (a key of :data:`TINY_CONFIGS`) shrunk for CPU tests,
    with `num_classes` classes and no test set.
    """
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, TINY_CONFIGS[family]))
    shrink(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.DATASETS.TEST = ()
    return cfg


def flat_config(tree: Dict, prefix: str = "") -> Dict[str, object]:
    """Dotted key (after `prefix`) -> value of every leaf of a nested dict (a CfgNode or a YAML
    tree), in the tree's order."""
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            items.update(flat_config(value, f"{prefix}{key}."))
        else:
            items[prefix + key] = value
    return items


def official_cfg(name="semask_swinL_mask2former_ade20k.yaml"):
    """A released model's official config dump (``tests/data/official_configs``), merged."""
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(os.path.join(DATA_DIR, "official_configs", name))
    return cfg


def tiny_model(cfg, seed=0):
    """`build_model(cfg)` with weights drawn after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    return build_model(cfg)


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


def odd_size_inference_inputs() -> List[Dict]:
    """Two images of odd sizes for inference: 45 x 71 asked for at 90 x 142, and 61 x 33."""
    return [
        {"image": torch.rand(3, 45, 71) * 255, "height": 90, "width": 142},
        {"image": torch.rand(3, 61, 33) * 255},
    ]


def train_steps(
    model: torch.nn.Module,
    inputs: Union[List[Dict], Callable[[], List[Dict]]],
    steps: int,
    lr: float = 1e-3,
) -> Iterator[float]:
    """
    `steps` AdamW steps (learning rate `lr`) of `model` on `inputs`: one batch of mapper-like
    dicts, or a callable that draws each step's batch. Yields each step's total loss after its
    optimizer step, while the step's gradients are still there to look at.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    with EventStorage():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = sum(model(inputs() if callable(inputs) else inputs).values())
            loss.backward()
            optimizer.step()
            yield loss.item()


def parameters_without_gradient(module: torch.nn.Module) -> List[str]:
    """Names of the parameters of `module` whose gradient is missing or all zero."""
    return [k for k, p in module.named_parameters() if p.grad is None or not p.grad.any()]

#!/usr/bin/env python
"""
Convert a Swin ImageNet checkpoint into Detectron2 weights for ``D2SeMaskSwinTransformer``.

Two source layouts are recognised from their keys:

* official Swin (``swin_tiny_patch4_window7_224.pth`` ... ``swin_large_patch4_window12_384_22k``,
  state dict under ``"model"``): ``layers.{i}.downsample.*`` ends stage i, heads are ``head.*``,
  ``attn.relative_position_index`` and ``attn_mask`` buffers are stored;
* timm (a bare state dict, or under ``"model"``/``"state_dict"``): the merging of stage i is stored
  as ``layers.{i+1}.downsample.*``, the head is ``head.fc.*``, no ``relative_position_index``.

Keys are renamed through an explicit table built from the inferred architecture, so the output
loads with ``matching_heuristics`` off. ``attn_mask``, the final ``norm.*`` and the classifier are
dropped; any other key not in the table is an error. The semantic layers and the output norms
``norm0..3`` have no ImageNet counterpart and keep their initialization.

Usage:
    python tools/convert_swin_imagenet.py swin_large_patch4_window12_384_22k.pth swin_L.pkl
"""

import argparse
import logging
import math
import os
import pickle
import re
import sys
import tempfile
from collections import defaultdict
from typing import Dict, Iterable, List, Tuple

import torch

from semask_d2.modeling.backbone.semask_swin import D2SeMaskSwinTransformer
from semask_d2.modeling.backbone.swin_blocks import relative_position_index

logger = logging.getLogger(__name__)

AUTHOR = "semask_d2.tools.convert_swin_imagenet"
OFFICIAL, TIMM = "official", "timm"
# Parameters of one Swin block, one patch merging and the patch embedding (same names everywhere).
_BLOCK_PARAMS = (
    "norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.qkv.weight",
    "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
    "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
)  # fmt: skip
_MERGE_PARAMS = ("reduction.weight", "norm.weight", "norm.bias")
_PATCH_EMBED_PARAMS = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")
# Dropped on purpose: ImageNet classifier and the final norm that only feeds it.
_HEAD_KEYS = {OFFICIAL: ("head.weight", "head.bias"), TIMM: ("head.fc.weight", "head.fc.bias")}
_FINAL_NORM_KEYS = ("norm.weight", "norm.bias")
_BLOCK_RE = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE_RE = re.compile(r"layers\.(\d+)\.downsample\.")


class ConversionError(ValueError):
    """The input is not a Swin checkpoint this tool can convert."""


def detect_layout(keys: Iterable[str]) -> str:
    """
    Returns:
        str: ``"official"`` (merging stored at the end of stage 0..2) or ``"timm"`` (at the start
        of stage 1..3). Raises :class:`ConversionError` for anything else.
    """
    keys = set(keys)
    merge_stages = {int(m.group(1)) for m in map(_DOWNSAMPLE_RE.match, keys) if m}
    if 0 in merge_stages and "head.fc.weight" not in keys:
        return OFFICIAL
    if merge_stages and 0 not in merge_stages and "head.weight" not in keys:
        return TIMM
    heads = sorted(k for k in keys if k.startswith("head."))
    raise ConversionError(
        "not an official or timm Swin state dict: patch merging stored under stages "
        f"{sorted(merge_stages)} (official: 0-2, timm: 1-3), head keys {heads}"
    )


def _window_from_table(rows: int) -> int:
    window = (math.isqrt(rows) + 1) // 2
    if (2 * window - 1) ** 2 != rows:
        raise ConversionError(f"relative_position_bias_table has {rows} rows, not (2W-1)^2")
    return window


def infer_architecture(state_dict: Dict[str, torch.Tensor]) -> dict:
    """Swin hyper-parameters from tensor shapes: keyword arguments of the backbone."""
    blocks = defaultdict(set)
    for m in filter(None, map(_BLOCK_RE.match, state_dict)):
        blocks[int(m.group(1))].add(int(m.group(2)))
    depths = [len(blocks[i]) for i in sorted(blocks)]
    if not blocks or any(blocks[i] != set(range(d)) for i, d in enumerate(depths)):
        raise ConversionError(f"stages/blocks are not numbered 0..n-1: {dict(blocks)}")
    try:
        table = "layers.{}.blocks.0.attn.relative_position_bias_table"
        tables = [state_dict[table.format(i)] for i in range(len(depths))]
        proj = state_dict["patch_embed.proj.weight"]
        fc1 = state_dict["layers.0.blocks.0.mlp.fc1.weight"]
    except KeyError as e:
        raise ConversionError(f"missing key {e} needed to infer the architecture") from None
    windows = {_window_from_table(t.shape[0]) for t in tables}
    if len(windows) != 1:
        raise ConversionError(f"stages use different window sizes {sorted(windows)}")
    return dict(
        embed_dim=proj.shape[0],
        depths=depths,
        num_heads=[t.shape[1] for t in tables],
        window_size=windows.pop(),
        patch_size=proj.shape[-1],
        mlp_ratio=fc1.shape[0] / proj.shape[0],
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state_dict,
        patch_norm="patch_embed.norm.weight" in state_dict,
    )


def build_key_map(layout: str, depths: List[int]) -> Tuple[Dict[str, str], List[str]]:
    """
    Returns:
        dict[str, str]: source key -> ``backbone.*`` key, for every key the layout may hold.
        list[str]: source keys that are dropped on purpose.
    """
    key_map = {f"patch_embed.{p}": f"backbone.patch_embed.{p}" for p in _PATCH_EMBED_PARAMS}
    dropped = list(_HEAD_KEYS[layout] + _FINAL_NORM_KEYS)
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            for p in _BLOCK_PARAMS + ("attn.relative_position_index",):
                key_map[f"{block}.{p}"] = f"backbone.{block}.{p}"
            dropped.append(f"{block}.attn_mask")  # built per forward from the input size
        if i < len(depths) - 1:
            # timm stores the merging that ends stage i at the start of stage i + 1; the 2x2
            # concatenation order is the official one, so the tensors copy unchanged.
            src = i if layout == OFFICIAL else i + 1
            for p in _MERGE_PARAMS:
                key_map[f"layers.{src}.downsample.{p}"] = f"backbone.layers.{i}.downsample.{p}"
    return key_map, dropped


def target_shapes(arch: dict, num_classes: int = 1) -> Dict[str, Tuple[int, ...]]:
    """
    ``backbone.*`` keys and shapes of the SeMask backbone with the architecture ``arch`` (see
    :func:`infer_architecture`) and `num_classes` prior classes, built on the meta device.
    """
    with torch.device("meta"):
        backbone = D2SeMaskSwinTransformer(
            **arch, num_classes=num_classes, sem_window_size=arch["window_size"], drop_path_rate=0
        )
    return {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """
    Args:
        state_dict (dict[str, Tensor]): an official or timm Swin ImageNet state dict.
    Returns:
        dict[str, Tensor]: ``backbone.*`` weights of ``D2SeMaskSwinTransformer``.
        dict: ``layout``, ``architecture`` (backbone kwargs), ``dropped`` and ``computed``
        (written by this tool) source/target keys, ``missing`` backbone keys left at init.
    """
    layout = detect_layout(state_dict)
    arch = infer_architecture(state_dict)
    logger.info("Swin checkpoint in %s layout, architecture %s", layout, arch)
    key_map, drop = build_key_map(layout, arch["depths"])
    unknown = sorted(k for k in state_dict if k not in key_map and k not in drop)
    if unknown:
        raise ConversionError(f"{len(unknown)} unexpected key(s) in the {layout} layout: {unknown}")

    new_sd = {key_map[k]: v for k, v in state_dict.items() if k in key_map}
    computed, expected = [], relative_position_index(arch["window_size"])
    for i, depth in enumerate(arch["depths"]):
        for j in range(depth):
            key = f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"
            if key not in new_sd:
                new_sd[key] = expected.clone()
                computed.append(key)
            elif not torch.equal(new_sd[key].long(), expected):
                raise ConversionError(f"{key} differs from the standard Swin index")

    shapes = target_shapes(arch)
    extra = sorted(k for k in new_sd if k not in shapes)
    wrong = sorted(k for k in new_sd if k in shapes and tuple(new_sd[k].shape) != shapes[k])
    if extra or wrong:
        raise ConversionError(f"keys not in the backbone: {extra}; wrong shapes: {wrong}")
    missing = sorted(k for k in shapes if k not in new_sd)
    expected_missing = re.compile(r"backbone\.(layers\.\d+\.semantic_layer\.|norm\d+\.)")
    if not all(expected_missing.match(k) for k in missing):
        logger.warning("The checkpoint lacks Swin weights: %s", missing)
    dropped = sorted(k for k in state_dict if k in drop)
    info = dict(layout=layout, architecture=arch, dropped=dropped, computed=computed)
    return new_sd, dict(info, missing=missing)


def load_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Read a checkpoint and return its state dict (bare, or under "model" / "state_dict")."""
    if not os.path.isfile(path):
        raise ConversionError(f"input checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises many types for files that are not checkpoints
        reason = f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
        hint = "" if allow_pickle else " (if it holds trusted non-tensor objects: --allow-pickle)"
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {reason}{hint}")
    if isinstance(obj, dict):
        sd = next((obj[k] for k in ("model", "state_dict") if isinstance(obj.get(k), dict)), obj)
        if sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            return sd
    raise ConversionError(f"{path} holds no state dict of tensors (bare, 'model', 'state_dict')")


def save_weights(new_sd: Dict[str, torch.Tensor], path: str, author: str = AUTHOR) -> None:
    """Atomically write Detectron2 weights: ``.pkl`` with numpy arrays or ``.pth`` with tensors."""
    ext = os.path.splitext(path)[1]
    if ext not in (".pkl", ".pth"):
        raise ConversionError(f"output must end in .pkl or .pth: {path}")
    model = {k: v.detach().cpu() for k, v in new_sd.items()}
    if ext == ".pkl":
        model = {k: v.numpy() for k, v in model.items()}
    data = {"model": model, "__author__": author, "matching_heuristics": False}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=ext + ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if ext == ".pkl":
                pickle.dump(data, f)
            else:
                torch.save(data, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", help="official (.pth, 'model') or timm Swin ImageNet checkpoint")
    parser.add_argument("output", help="Detectron2 weights to write (.pkl or .pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="torch.load with weights_only=False"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if os.path.exists(args.output) and not args.overwrite:
            raise ConversionError(f"{args.output} exists; pass --overwrite to replace it")
        new_sd, info = convert_state_dict(load_state_dict(args.input, args.allow_pickle))
        save_weights(new_sd, args.output)
    except (ConversionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Layout: {info['layout']}; architecture: {info['architecture']}")
    print(f"Wrote {len(new_sd)} backbone tensors to {args.output}")
    print(f"Dropped {len(info['dropped'])} source keys (attn_mask, final norm, classifier)")
    if info["computed"]:
        print(f"Computed {len(info['computed'])} relative_position_index buffers")
    print(f"Backbone keys not in the checkpoint (left at init): {len(info['missing'])}")
    for key in info["missing"]:
        print(f"  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

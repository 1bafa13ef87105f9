"""
SeMask Swin Transformer backbone for Detectron2 (Jain et al., arXiv 2112.12782).

Written for semask-d2 from the paper and the official SeMask-Mask2Former
``mask2former/modeling/backbone/semask_swin.py`` (Picsart-AI-Research/SeMask-Segmentation). The
state-dict keys and shapes are those of the official SeMask-Mask2Former backbone, so official
checkpoints load without renaming; the computation is the official one. Unlike the official
backbone, ``forward`` returns one dict (features and prior maps), ``output_shape()`` describes all
of it, ``NUM_SEM_BLOCKS: 0`` gives a plain Swin, and the semantic layers train under the default
init.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..head_family import sem_windowed_from_config
from ..semantic_prior import prior_feature_name
from .semantic_layer import SemanticLayer
from .swin_blocks import PatchEmbed, PatchMerging, SwinBlock, build_shift_mask

__all__ = [
    "D2SeMaskSwinTransformer",
    "FeatureDict",
    "SeMaskSwinStage",
    "SWIN_SIZES",
    "default_sem_windowed",
]

# Swin sizes (Swin paper, arXiv 2103.14030; official SeMask configs): embed_dim, depths,
# num_heads, window_size.
SWIN_SIZES = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


class FeatureDict(dict):
    """
    The backbone outputs: a plain dict of feature maps for every consumer, that also remembers
    the spatial size of the network input. Heads that resize their logits to the input, as
    mmseg does, read :attr:`input_size`; detectron2's meta-architectures hand the backbone's
    dict to the head untouched.
    """

    def __init__(self, input_size: Tuple[int, int]):
        """
        Args:
            input_size (tuple[int, int]): (H, W) of the backbone's input tensor.
        """
        super().__init__()
        self.input_size = input_size


def default_sem_windowed(num_classes: int, num_stages: int = 4) -> List[bool]:
    """
    The official SeMask-Mask2Former rule for windowed (True) or global (False) semantic
    attention: stages 0-2 windowed and the last global for 150 classes, every stage windowed
    otherwise. The default of backbones built from arguments; configs go through the head
    family's rule (semask_d2/modeling/head_family.py).
    """
    if num_classes == 150:
        return [True] * (num_stages - 1) + [False]
    return [True] * num_stages


def _init_swin_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SeMaskSwinStage(nn.Module):
    """
    One stage: Swin blocks (regular and shifted windows alternating), the semantic layer, then
    patch merging applied to the semantic layer's output.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        downsample: bool,
        num_classes: int,
        num_sem_blocks: int,
        sem_window_size: int,
        sem_windowed: bool,
        sem_dropout: float,
        sem_init: str,
        use_checkpoint: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    window_size,
                    shift_size=0 if j % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[j],
                )
                for j in range(depth)
            ]
        )
        self.semantic_layer = (
            SemanticLayer(
                dim,
                num_classes,
                num_sem_blocks,
                sem_window_size,
                sem_windowed,
                sem_dropout,
                sem_init,
            )
            if num_sem_blocks > 0
            else None
        )
        self.downsample = PatchMerging(dim) if downsample else None
        _init_swin_weights(self.blocks)
        if self.downsample is not None:
            _init_swin_weights(self.downsample)

    def forward(self, x: torch.Tensor, h: int, w: int):
        """
        Args:
            x (Tensor): (B, h * w, C) tokens.
        Returns:
            tuple: stage output (B, h * w, C), prior logits (B, h * w, K) or None, input of the
            next stage (B, h' * w', C'), and h', w'.
        """
        shift_mask = None
        if len(self.blocks) > 1:
            hp = h + (-h) % self.window_size
            wp = w + (-w) % self.window_size
            shift_mask = build_shift_mask(hp, wp, self.window_size, self.shift_size, x.device)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = cp.checkpoint(block, x, h, w, shift_mask, use_reentrant=False)
            else:
                x = block(x, h, w, shift_mask)
        prior = None
        if self.semantic_layer is not None:
            x, prior = self.semantic_layer(x, h, w)
        if self.downsample is None:
            return x, prior, x, h, w
        return x, prior, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


@BACKBONE_REGISTRY.register()
class D2SeMaskSwinTransformer(Backbone):
    """
    SeMask Swin Transformer (registry name of the official SeMask code).

    ``forward`` returns ``res2``..``res5`` (those in ``out_features``; strides 4-32, channels
    embed_dim * 2^i) and, when semantic layers exist, the raw prior logits ``res2_prior``..
    ``res5_prior`` (B, K, H/s, W/s) of every stage.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        num_classes: int = 150,
        in_chans: int = 3,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.3,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        num_sem_blocks: int = 1,
        sem_window_size: int = 7,
        sem_windowed: Optional[Sequence[bool]] = None,
        sem_dropout: float = 0.1,
        sem_init: str = "mmseg",
        use_checkpoint: bool = False,
        size_divisibility: int = 32,
    ):
        """
        Args:
            embed_dim (int): channels of the first stage; stage i has embed_dim * 2^i.
            depths, num_heads (list[int]): Swin blocks and attention heads per stage.
            window_size (int): window of the Swin blocks.
            num_classes (int): K, channels of the prior maps.
            pretrain_img_size (int): image size of the pretraining, for the absolute position
                embedding only.
            ape (bool): add an absolute position embedding (`absolute_pos_embed`).
            out_features (list[str]): which of res2..res5 to return.
            num_sem_blocks (int): SemanticAttention modules per semantic layer; 0 gives a plain
                Swin without prior outputs.
            sem_window_size (int): window of the windowed semantic layers.
            sem_windowed (list[bool] or None): per stage, windowed (True) or global (False)
                semantic attention; None applies :func:`default_sem_windowed`.
            sem_dropout (float): dropout after `mlp_res` (0.1 in the official code).
            sem_init (str): "mmseg" (the branch trains) or "official" (detectron2 SeMask: the
                attention branch starts at exactly zero and never receives a gradient).
            use_checkpoint (bool): gradient checkpointing of the Swin blocks in training.
            size_divisibility (int): what meta-architectures pad their inputs to a multiple of;
                0 for no padding (the stages pad inside, as mmseg's Swin).
            Others: as in Swin (dropout rates, patch size, qkv bias and scale, patch norm).
        """
        super().__init__()
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} differ in length"
            )
        if sem_windowed is None or len(sem_windowed) == 0:
            sem_windowed = default_sem_windowed(num_classes, num_stages)
        if len(sem_windowed) != num_stages:
            raise ValueError(
                f"sem_windowed has {len(sem_windowed)} entries, expected one per stage "
                f"({num_stages})"
            )
        stage_names = [f"res{i + 2}" for i in range(num_stages)]
        unknown = [f for f in out_features if f not in stage_names]
        if unknown:
            raise ValueError(f"Unknown out_features {unknown}; choose among {stage_names}")
        if size_divisibility < 0:
            raise ValueError(
                f"MODEL.SWIN.SIZE_DIVISIBILITY must be 0 (no padding) or positive, got "
                f"{size_divisibility}"
            )
        self.num_classes = num_classes
        self.num_sem_blocks = num_sem_blocks
        self._size_divisibility = size_divisibility

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            self.layers.append(
                SeMaskSwinStage(
                    dim=embed_dim * 2**i,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < num_stages - 1,
                    num_classes=num_classes,
                    num_sem_blocks=num_sem_blocks,
                    sem_window_size=sem_window_size,
                    sem_windowed=bool(sem_windowed[i]),
                    sem_dropout=sem_dropout,
                    sem_init=sem_init,
                    use_checkpoint=use_checkpoint,
                )
            )

        self._out_features = list(out_features)
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        for i, name in enumerate(stage_names):
            stride, channels = patch_size * 2**i, embed_dim * 2**i
            if name in self._out_features:
                self._out_feature_strides[name] = stride
                self._out_feature_channels[name] = channels
                # One output norm per returned stage, as the official `norm{i}`.
                self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self._prior_features = (
            [prior_feature_name(n) for n in stage_names] if num_sem_blocks > 0 else []
        )
        for i, name in enumerate(self._prior_features):
            self._out_feature_strides[name] = patch_size * 2**i
            self._out_feature_channels[name] = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        swin = cfg.MODEL.SWIN
        num_classes = swin.NUM_PRIOR_CLASSES or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        return {
            "embed_dim": swin.EMBED_DIM,
            "depths": swin.DEPTHS,
            "num_heads": swin.NUM_HEADS,
            "window_size": swin.WINDOW_SIZE,
            "num_classes": num_classes,
            "in_chans": input_shape.channels,
            "pretrain_img_size": swin.PRETRAIN_IMG_SIZE,
            "patch_size": swin.PATCH_SIZE,
            "mlp_ratio": swin.MLP_RATIO,
            "qkv_bias": swin.QKV_BIAS,
            "qk_scale": swin.QK_SCALE,
            "drop_rate": swin.DROP_RATE,
            "attn_drop_rate": swin.ATTN_DROP_RATE,
            "drop_path_rate": swin.DROP_PATH_RATE,
            "ape": swin.APE,
            "patch_norm": swin.PATCH_NORM,
            "out_features": swin.OUT_FEATURES,
            "num_sem_blocks": swin.NUM_SEM_BLOCKS,
            "sem_window_size": swin.SEM_WINDOW_SIZE,
            # As stated, else the head family's rule (semask_d2/modeling/head_family.py).
            "sem_windowed": sem_windowed_from_config(cfg, num_classes),
            "sem_dropout": swin.SEM_DROPOUT,
            "sem_init": swin.SEM_INIT,
            "use_checkpoint": swin.USE_CHECKPOINT,
            "size_divisibility": swin.SIZE_DIVISIBILITY,
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (B, C, H, W) normalized images; any H, W (padded internally).
        Returns:
            FeatureDict: str -> Tensor, the keys of :meth:`output_shape`; ``input_size`` (H, W).
        """
        if x.dim() != 4:
            raise ValueError(
                f"D2SeMaskSwinTransformer takes (B, C, H, W) input, got {tuple(x.shape)}"
            )
        outputs = FeatureDict(input_size=tuple(x.shape[-2:]))
        x, h, w = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            pos = F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
            x = x + pos.flatten(2).transpose(1, 2)
        x = self.pos_drop(x)
        for i, stage in enumerate(self.layers):
            name = f"res{i + 2}"
            out, prior, x, h_next, w_next = stage(x, h, w)
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.view(-1, h, w, out.shape[-1]).permute(0, 3, 1, 2).contiguous()
            if prior is not None:
                # A channels-last view, not a copy: only the prior loss reads these maps, and it
                # makes them contiguous itself (inference never pays for the copy).
                prior = prior.view(-1, h, w, self.num_classes)
                outputs[prior_feature_name(name)] = prior.permute(0, 3, 1, 2)
            h, w = h_next, w_next
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features + self._prior_features
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

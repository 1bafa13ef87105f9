"""
Loading ``MODEL.WEIGHTS`` with one-line errors, and refusing weights that do not fit the model.

detectron2's checkpointer reports a missing file, an unreadable one or a URL it cannot fetch as
a deep traceback, and loads a checkpoint of another model size with warnings only, so that an
evaluation then scores a mostly random model. :class:`StrictCheckpointer` turns each case into a
:class:`WeightsError` (a user error: ``train_net.py`` and the demo print it as one line) and
loads partially only when ``MODEL.WEIGHTS_PARTIAL`` asks for it.
"""

import logging
import os
import re
from contextlib import contextmanager
from typing import Dict, Iterator, List

from .checkpoint import AtomicDetectionCheckpointer

__all__ = ["StrictCheckpointer", "WeightsError", "build_checkpointer"]

# Keys a backbone-only checkpoint (e.g. an ImageNet Swin converted by
# tools/convert_swin_imagenet.py) cannot provide: the head, the criterion's buffers, the SeMask
# semantic layers and the output norms, which ImageNet Swin lacks.
_NOT_IN_BACKBONE_CHECKPOINTS = re.compile(
    r"(sem_seg_head|criterion)\..*|backbone\.(layers\.\d+\.semantic_layer|norm\d+)\..*"
)
# Buffers a checkpoint may lack whatever it holds.
_ALWAYS_OPTIONAL = re.compile(r".*num_batches_tracked")
# ImageNet Swin checkpoints as the shipped configs name them once converted.
_IMAGENET_SWIN = re.compile(r"swin_(tiny|small|base|large)_patch4_window\d+_\d+(_22k)?\.pkl")
# Loggers of the partial-load warnings that a refused checkpoint would print before its error.
_LOAD_LOGGERS = ("fvcore.common.checkpoint", "detectron2.checkpoint.detection_checkpoint")
_EXAMPLES = 3


class WeightsError(ValueError):
    """MODEL.WEIGHTS cannot be read or does not fit the model; one-line message."""


class StrictCheckpointer(AtomicDetectionCheckpointer):
    """
    :class:`AtomicDetectionCheckpointer` whose :meth:`load` raises :class:`WeightsError` when
    the file is missing, unreadable or unreachable, or when its weights do not fit the model:
    any unexpected key or shape mismatch, and any missing key except ``num_batches_tracked``
    and, for a checkpoint without ``sem_seg_head.*`` keys (a backbone), the head, the semantic
    layers and ``norm0..3``. With ``allow_partial`` it loads as detectron2 does, with its warnings.
    """

    def __init__(self, model, save_dir: str = "", *, allow_partial: bool = False, **kwargs):
        """
        Args:
            model, save_dir, kwargs: as :class:`AtomicDetectionCheckpointer`.
            allow_partial (bool): load whatever fits (fine-tuning from another model).
        """
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self._path = ""

    def load(self, path: str, *args, **kwargs) -> Dict:
        if path:
            self._check_reachable(path)
        self._path = path
        return super().load(path, *args, **kwargs)

    def _check_reachable(self, path: str) -> None:
        local = path.split("?")[0]
        if "://" in local:
            try:
                local = self.path_manager.get_local_path(local)
            except Exception as e:  # any download failure: no network, 404, bad host ...
                raise WeightsError(
                    f"MODEL.WEIGHTS {path} cannot be fetched ({type(e).__name__}). Fix: download "
                    "it on a machine with network access and set MODEL.WEIGHTS to the local file."
                ) from None
        if not os.path.isfile(local):
            raise WeightsError(_missing_file_message(path))

    def _load_file(self, filename: str) -> Dict:
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch.load and pickle fail in many ways on a broken file
            # The exception's own text is left out: torch's advises weights_only=False, which
            # would run arbitrary code from an unknown file.
            raise WeightsError(
                f"MODEL.WEIGHTS {filename} is not a readable checkpoint ({type(e).__name__}: "
                "truncated, corrupt, or not a PyTorch/detectron2 file). Fix: download or "
                "convert it again (tools/convert_swin_imagenet.py for ImageNet Swin)."
            ) from None

    def _load_model(self, checkpoint: Dict):
        if self.allow_partial:
            return super()._load_model(checkpoint)
        is_backbone = not any(k.startswith("sem_seg_head.") for k in checkpoint["model"])
        with _quiet(_LOAD_LOGGERS):
            incompatible = super()._load_model(checkpoint)
        problems = _misfit(incompatible, is_backbone)
        if problems:
            raise WeightsError(
                f"MODEL.WEIGHTS {self._path} does not fit the model: "
                + "; ".join(problems)
                + ". Fix: use the config the checkpoint was trained with (model size, classes), "
                "or set MODEL.WEIGHTS_PARTIAL True to fine-tune from the weights that fit."
            )
        return incompatible


def build_checkpointer(cfg, model, save_dir: str = "", **checkpointables) -> StrictCheckpointer:
    """The checkpointer of `model` for `cfg` (reads MODEL.WEIGHTS_PARTIAL)."""
    return StrictCheckpointer(
        model, save_dir, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL, **checkpointables
    )


def _missing_file_message(path: str) -> str:
    name = os.path.basename(path)
    if _IMAGENET_SWIN.fullmatch(name):
        source = name[: -len(".pkl")] + ".pth"
        return (
            f"MODEL.WEIGHTS {path} not found: it is an ImageNet Swin checkpoint converted for "
            f"detectron2. Fix: download {source} from the official Swin Transformer release, "
            f"run `python tools/convert_swin_imagenet.py {source} {name}`, and set MODEL.WEIGHTS "
            "to the result (or MODEL.WEIGHTS '' to train from scratch)."
        )
    return (
        f"MODEL.WEIGHTS {path} not found. Fix: set MODEL.WEIGHTS to an existing checkpoint "
        "(.pth or .pkl), or to '' for random initialisation."
    )


def _misfit(incompatible, is_backbone: bool) -> List[str]:
    wrong_shape = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [
        k
        for k in incompatible.missing_keys
        if k not in wrong_shape
        and not _ALWAYS_OPTIONAL.fullmatch(k)
        and not (is_backbone and _NOT_IN_BACKBONE_CHECKPOINTS.fullmatch(k))
    ]
    problems = []
    for what, keys in (
        ("missing", missing),
        ("unexpected", incompatible.unexpected_keys),
        (
            "wrong shape",
            [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes],
        ),
    ):
        if keys:
            examples = ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")
            problems.append(f"{len(keys)} {what} key(s) (e.g. {examples})")
    return problems


@contextmanager
def _quiet(names) -> Iterator[None]:
    """Mute WARNING records of the named loggers for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

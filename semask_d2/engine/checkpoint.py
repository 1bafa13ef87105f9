"""
A :class:`DetectionCheckpointer` whose files are replaced atomically.

fvcore writes checkpoints and ``last_checkpoint`` in place, so a run killed during a save can
leave a truncated ``model_*.pth`` that ``last_checkpoint`` already names, and ``--resume`` then
fails. Here each file is written to a temporary file in the same folder, flushed to disk and
moved into place with ``os.replace`` (atomic on POSIX and Windows), and ``last_checkpoint`` is
rewritten the same way only after the checkpoint itself is in place.
"""

import glob
import logging
import os
import tempfile
from typing import Any, Callable, IO

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer"]

logger = logging.getLogger(__name__)

# Temporary files are named ".<target name>.<random>.tmp": hidden, and never "model_*.pth".
_TMP_SUFFIX = ".tmp"


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    Same interface and file layout as :class:`DetectionCheckpointer`; only local save folders
    get the atomic protocol (remote ones, such as ``s3://``, fall back to the stock writes).
    Temporary files left by a killed run are removed when the checkpointer is created.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        if self.save_to_disk and self._is_local():
            for pattern in (".*.pth.*", ".last_checkpoint.*"):
                for path in glob.glob(os.path.join(self.save_dir, pattern + _TMP_SUFFIX)):
                    logger.info("Removing %s, left by an interrupted checkpoint save", path)
                    os.remove(path)

    def _is_local(self) -> bool:
        return bool(self.save_dir) and "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        """
        Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it.

        Args:
            name (str): file name without extension.
            kwargs: extra data stored in the checkpoint (e.g. ``iteration``).
        """
        if not self.save_to_disk or not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically rewrite ``last_checkpoint`` to name `last_filename_basename`."""
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )


def _atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    folder, basename = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # Same folder as the target: os.replace is only atomic within one file system.
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{basename}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        # Also on KeyboardInterrupt; a SIGKILL leaves the file to the next run's clean-up.
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Persist the rename itself across a power loss; not possible on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

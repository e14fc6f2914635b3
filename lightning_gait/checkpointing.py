"""Checkpoints that survive the ways a run ends: a full disk, a kill, SIGTERM, ``max_steps``.

``fit`` installs all three on its trainer; a script of one's own passes them to ``Trainer``::

    Trainer(plugins=[AtomicCheckpointIO()], callbacks=[SaveOnSigterm(), ResumeCutEpoch(), ...])

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the checkpoint's
  own folder, flushes it to disk and renames it over the target: at every instant the
  target is the previous complete file or the new complete one, whatever kills the
  process. (Lightning's own writer goes through a temporary file in the system's temporary
  folder; on another filesystem the final move is a copy, and a kill during it leaves a
  truncated file in place of the previous one.) A write that fails (full disk, quota, file
  size limit, read-only folder) removes its temporary file and raises
  :class:`CheckpointWriteError`, a one-line :class:`~lightning_gait.errors.UserError`; the
  earlier checkpoints stay as they were.
* :class:`SaveOnSigterm` saves ``last.ckpt`` when Lightning stops a run for SIGTERM (a
  scheduler's time limit, ``kill``): Lightning finishes the batch under way and raises
  ``SIGTERMException``, which by itself saves nothing and exits with code 0.
* :class:`ResumeCutEpoch` resumes a checkpoint written at the end of an epoch cut short
  (by ``max_steps``) in the middle of that epoch, where it stopped. Lightning marks such an
  epoch finished, so a resume would start the next one and never train the rest of it.
  With the DataModules of this package the resumed epoch continues with the very batches
  the uninterrupted run would have drawn (their loaders are resumable:
  :class:`~lightning_gait.data.dataset.ResumableLoader`).
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .errors import UserError

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "ResumeCutEpoch", "SaveOnSigterm", "TEMP_SUFFIX",
           "install_run_ends", "last_checkpoint_path", "remove_stale_temporaries"]

#: the suffix of a checkpoint being written (``.NAME.<random>.tmp`` beside ``NAME``)
TEMP_SUFFIX = ".tmp"


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written (full disk, read-only folder, size limit)."""


def write_failure(path: Path, err: OSError, what: str = "the checkpoint") -> str:
    """One line for a failed write of ``path``: the reason and what to do."""
    reason = err.strerror or str(err) or type(err).__name__
    return (f"cannot write {what} {path}: {reason}; the run's earlier checkpoints are kept: free space or "
            "give an output folder that can be written (--trainer.default_root_dir DIR)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.<random>.tmp`` in the target's folder, ``fsync``, rename to ``NAME``.

    Remote paths (``s3://...``) are left to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()  # serialized first (as Lightning does): a failed write is then a plain OSError
        torch.save(checkpoint, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        except OSError as err:
            raise CheckpointWriteError(write_failure(path, err)) from None
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException as err:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(err, OSError):
                raise CheckpointWriteError(write_failure(path, err)) from None
            raise
        _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (the folder's entry), where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list:
    """Remove the temporary files a killed writer left in ``folder``; returns their paths.

    Call it only while holding the folder's claim (:class:`~lightning_gait.runs.RunClaim`),
    when no other process can be writing there.
    """
    removed = []
    if folder.is_dir():
        for temp in folder.glob(f".*.ckpt.*{TEMP_SUFFIX}"):
            try:
                temp.unlink()
                removed.append(temp)
            except OSError:
                pass
    return removed


def last_checkpoint_path(trainer: "pl.Trainer") -> Optional[Path]:
    """Where the run keeps its ``last.ckpt``: the folder of the ``ModelCheckpoint`` that writes
    one (``filename: last`` or ``save_last``), else of the first ``ModelCheckpoint``."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for cb in callbacks:
        if cb.filename == ModelCheckpoint.CHECKPOINT_NAME_LAST or cb.save_last:
            return Path(cb.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    if callbacks:
        return Path(callbacks[0].dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{callbacks[0].FILE_EXTENSION}"
    return None


class SaveOnSigterm(pl.Callback):
    """On SIGTERM, save ``last.ckpt`` (see :func:`last_checkpoint_path`) before the run stops.

    Lightning notices the signal after the batch under way and raises ``SIGTERMException``;
    this saves the state there (a mid-epoch checkpoint that resumes exactly with this
    package's DataModules) and lets the exception end ``fit``. ``saved`` is the path
    written, or None. Without a ``ModelCheckpoint`` nothing is saved.
    """

    def __init__(self) -> None:
        self.saved: Optional[Path] = None

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.global_step == 0 and not trainer.current_epoch:
            return
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
            self.saved = path


class ResumeCutEpoch(pl.Callback):
    """Resume an epoch that ``max_steps`` cut short where it stopped, not at the next epoch.

    A checkpoint written when ``max_steps`` ends an epoch early records that epoch as
    finished, though its last batch was not reached (``is_last_batch`` false). Before the
    loops are restored, this records it as under way instead, so that a resume trains its
    remaining batches before the next epoch; then the run ends with the step count of an
    uninterrupted one. With a DataModule whose loaders cannot resume mid-epoch, Lightning
    warns that the batches of the resumed epoch start over.
    """

    def on_load_checkpoint(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                           checkpoint: Dict[str, Any]) -> None:
        fit_loop = (checkpoint.get("loops") or {}).get("fit_loop")
        if not fit_loop:
            return
        batches = fit_loop.get("epoch_loop.batch_progress", {})
        epochs = fit_loop.get("epoch_progress", {})
        total, current = epochs.get("total"), epochs.get("current")
        if not total or not current or batches.get("is_last_batch", True):
            return
        if not batches.get("current", {}).get("completed"):
            return
        # finished in the books (processed == started) but not at its last batch: reopen it
        if total["processed"] == total["started"] == total["ready"] and total["completed"] == total["processed"] - 1:
            for progress in (total, current):
                progress["processed"] -= 1


def install_run_ends(trainer: "pl.Trainer") -> "SaveOnSigterm":
    """Give ``trainer`` (built) the writer and callbacks of this module, as ``fit`` does; a
    writer of one's own (``Trainer(plugins=...)``) is kept. Returns the :class:`SaveOnSigterm`."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    sigterm = next((cb for cb in trainer.callbacks if isinstance(cb, SaveOnSigterm)), None)
    if sigterm is None:
        sigterm = SaveOnSigterm()
        trainer.callbacks.append(sigterm)
    if not any(isinstance(cb, ResumeCutEpoch) for cb in trainer.callbacks):
        trainer.callbacks.append(ResumeCutEpoch())
    return sigterm

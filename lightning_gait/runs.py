"""Where a ``fit`` run writes, and the checks before it starts or resumes.

A run writes its checkpoints and its resolved ``config.yaml`` into one folder, the *run
folder*: ``<save_dir>/<name>/<version>`` of its first logger (for the W&B logger
``<save_dir>/<project>/<run id>``, for a CSV logger with ``version ""``
``<save_dir>/<name>``), or ``default_root_dir`` without a logger; the checkpoints go to
its ``checkpoints/`` (Lightning's ``ModelCheckpoint`` rule).

* :class:`RunClaim`: a run holds an exclusive lock on its folders (a ``.run.lock`` file,
  ``flock``) from before it writes anything until it ends, so that a second run started
  on the same folder, at once or while the first still runs (a resume too), is refused
  instead of replacing its files. The kernel drops the lock when the process dies, even
  by ``kill -9``: a stale lock file never blocks a later run.
* :func:`refuse_another_runs_folder`: a run does not start in a folder that holds another
  run's checkpoints, unless it resumes one of them (``--ckpt_path`` in that folder).
  Checked while holding the claim, so that no run can write in between.
* :func:`check_resume_checkpoint`: the checkpoint to resume exists, reads completely, fits
  the model (parameter names and shapes) and was written in the trainer's precision.
* :func:`record_run`: every checkpoint records the W&B run's id (:func:`wandb_run_id`
  reads it back, so that a resumed run continues that run and its folder) and the rule and
  network that wrote it.

Each raises a :class:`~lightning_gait.errors.UserError` whose message names the file and
what to do.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .errors import CheckpointError, RunFolderError

__all__ = [
    "CHECKPOINT_KEY",
    "LOCK_NAME",
    "RunClaim",
    "run_folder",
    "checkpoint_folders",
    "run_folders",
    "refuse_another_runs_folder",
    "resume_in_the_runs_folder",
    "check_resume_checkpoint",
    "model_record",
    "record_run",
    "record_wandb_run",
    "load_checkpoint",
    "wandb_run_id",
]

#: the checkpoint entry where lightning-gait records the run (``{"wandb_run_id": ...}``)
CHECKPOINT_KEY = "lightning_gait"

_PRECISION_OF_DTYPE = {
    torch.float64: "64-true",
    torch.float32: "32-true",
    torch.float16: "16-true",
    torch.bfloat16: "bf16-true",
}


def _is_wandb(logger) -> bool:
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def run_folder(trainer) -> Optional[Path]:
    """The folder this run writes to; ``None`` for a W&B run not started yet and without an
    id (it gets a new id, and so a new folder)."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version
    if version is None and _is_wandb(logger):
        return None
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


def checkpoint_folders(trainer) -> List[Path]:
    """The folders the trainer's ``ModelCheckpoint`` callbacks will write to (known ones)."""
    folders: List[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is not None:
            folder = Path(callback.dirpath)
        else:
            base = run_folder(trainer)
            if base is None:
                continue
            folder = base / "checkpoints"
        if folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    return folders


#: the lock file a running ``fit`` holds in each of its folders (removed when the run ends)
LOCK_NAME = ".run.lock"


class RunClaim:
    """An exclusive claim on a run's folders for the life of a run: ``with RunClaim(folders):``.

    Each folder gets a :data:`LOCK_NAME` file locked with ``flock(LOCK_EX | LOCK_NB)`` and
    holding the owner's pid, host, start time and command line; a folder already locked
    raises :class:`RunFolderError` naming that owner. The lock lives as long as the open
    file: a process that dies (also by ``kill -9``) releases it, so a lock file left behind
    is taken over, never obeyed. Leaving the block unlinks the files (and removes folders
    the claim created, when still empty). Where ``fcntl`` is missing (Windows) no lock is
    taken.
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = _outermost(folders)
        self._held: List[tuple] = []
        self._created: List[Path] = []

    def __enter__(self) -> "RunClaim":
        try:
            for folder in self.folders:
                self._claim(folder)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _claim(self, folder: Path) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover (Windows)
            return
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._created += missing
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunFolderError(
                    f"{folder} is in use by a run still going ({owner}): wait for it to end (then resume it with "
                    "--ckpt_path), or give this run its own folder (--trainer.default_root_dir DIR, or another "
                    "logger name or version)") from None
            try:  # the holder before us may have unlinked the file while we waited for it: lock the one on disk
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode())
        self._held.append((path, fd))

    def release(self) -> None:
        """Unlink and unlock every lock file held (idempotent)."""
        while self._held:
            path, fd = self._held.pop()
            try:
                os.unlink(path)
            except OSError:
                pass
            os.close(fd)
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
        self._created = []


def _outermost(folders: Sequence[Path]) -> List[Path]:
    """``folders`` resolved, without those inside another of them (one lock covers those)."""
    resolved = sorted({Path(f).resolve() for f in folders}, key=lambda p: len(p.parts))
    kept: List[Path] = []
    for folder in resolved:
        if not any(folder == k or k in folder.parents for k in kept):
            kept.append(folder)
    return kept


def run_folders(trainer) -> List[Path]:
    """The folders this run writes to that are known before it starts: its run folder and its
    checkpoint folders (a new W&B run's folder is named by its new id when it starts)."""
    base = run_folder(trainer)
    return ([base] if base is not None else []) + checkpoint_folders(trainer)


def resume_in_the_runs_folder(config, args: List[str]) -> Optional[Path]:
    """Without a logger, a resumed run continues in the folder of its checkpoint.

    With ``--trainer.logger false`` the run folder is ``default_root_dir``; a resume that
    does not give one on the command line would write its continuation to the config's
    (``outputs``) instead of beside the checkpoint it continues. For a checkpoint in
    ``RUN/checkpoints/``, ``trainer.default_root_dir`` becomes ``RUN``; returns it (None
    when nothing changed).
    """
    ckpt = config.get("ckpt_path")
    if not ckpt or config.get("trainer.logger") is not False:
        return None
    if any(isinstance(a, str) and a.split("=", 1)[0] == "--trainer.default_root_dir" for a in args):
        return None
    path = Path(ckpt).expanduser().resolve()
    if path.parent.name != "checkpoints":
        return None
    folder = path.parent.parent
    if Path(str(config.get("trainer.default_root_dir") or ".")).resolve() == folder:
        return None
    config["trainer.default_root_dir"] = str(folder)
    return folder


def refuse_another_runs_folder(trainer, ckpt_path: Optional[str]) -> None:
    """Raise :class:`RunFolderError` if this run would write its checkpoints into a folder
    holding another run's, unless it resumes from one of them. Checked on global rank 0."""
    if not trainer.is_global_zero:
        return
    resumed = Path(ckpt_path).resolve() if ckpt_path else None
    for folder in checkpoint_folders(trainer):
        found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
        if not found or (resumed is not None and resumed.parent == folder.resolve()):
            continue
        last = folder / "last.ckpt"
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunFolderError(
            f"{folder} already holds another run's checkpoints ({names}), which this run would replace: "
            f"resume that run with --ckpt_path {last if last.is_file() else found[0]}, or give this one its "
            "own folder (--trainer.default_root_dir DIR, or another logger name or version)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0].split(". ")[0].rstrip(".") if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped; :class:`CheckpointError` naming what is wrong
    with a path that is missing, a folder, a Lightning keyword, or not a readable checkpoint."""
    file = Path(path).expanduser()
    if not file.exists() and path in ("last", "best", "hpc", "registry"):
        raise CheckpointError(
            f"--ckpt_path {path}: give the checkpoint file itself (e.g. outputs/lightning-gait/<run id>/checkpoints/"
            "last.ckpt); Lightning's keywords do not find it, since every run writes to a folder of its own")
    if not file.exists():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    if file.is_dir():
        raise CheckpointError(f"--ckpt_path {path} is a folder; give a checkpoint file (such as "
                              f"{file / 'checkpoints' / 'last.ckpt'})")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, foreign pickle, ...: all mean "not a readable checkpoint"
        raise CheckpointError(
            f"--ckpt_path {path} cannot be read as a checkpoint ({_first_line(err)}): the file is truncated or "
            "damaged (a run killed while writing it?); resume from another checkpoint of the run"
        ) from None
    return checkpoint


def check_resume_checkpoint(path: str, model, precision: str, model_config: Optional[dict] = None) -> Dict[str, Any]:
    """Load the checkpoint at ``path`` (memory-mapped) and check that ``model`` under
    ``precision`` can resume from it; return it. Raises :class:`CheckpointError`.

    ``model_config`` (the ``model`` section of this run's configuration) is compared with
    the one the checkpoint's run recorded (:func:`record_run`): another rule or another
    network (class or settings, such as the activation) is refused even where the shapes
    agree. The rule's own settings (``lr``, ``eta``, ...) may change; the rule says which
    did when training starts."""
    from .data.base import _PRECISION_DTYPES

    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it holds no state_dict)")
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} holds weights only (saved with weights_only=True), not the "
                              "optimizer and loop state a run resumes from")
    theirs, ours = checkpoint["state_dict"], model.state_dict()
    for key, value in ours.items():
        if key in theirs and tuple(theirs[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"--ckpt_path {path} does not fit the model: {key} has shape {tuple(theirs[key].shape)} in the "
                f"checkpoint and {tuple(value.shape)} in the model of this configuration; resume with the "
                "network settings the run started with (its config.yaml)"
            )
    missing = [k for k in ours if k not in theirs]
    extra = [k for k in theirs if k not in ours]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the checkpoint lacks {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"it holds {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}, which the model lacks")
        raise CheckpointError(f"--ckpt_path {path} does not fit the model: {' and '.join(parts)}; resume with the "
                              "rule and network the run started with (its config.yaml)")
    dtypes = {v.dtype for v in theirs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    wanted = _PRECISION_DTYPES.get(str(precision), torch.float32)
    if len(dtypes) == 1 and wanted not in dtypes:
        dtype = dtypes.pop()
        written = _PRECISION_OF_DTYPE.get(dtype, str(dtype))
        raise CheckpointError(
            f"--ckpt_path {path} holds {str(dtype).replace('torch.', '')} weights (precision {written}) but this run "
            f"uses --trainer.precision {precision}; resume with --trainer.precision {written}: a run continues "
            "in the precision it started in"
        )
    _check_same_model(path, (checkpoint.get(CHECKPOINT_KEY) or {}).get("model"), model_config)
    return checkpoint


def wandb_run_id(path: str) -> Optional[str]:
    """The id of the W&B run that wrote the checkpoint at ``path`` (None if it recorded none)."""
    checkpoint = load_checkpoint(path)
    return (checkpoint.get(CHECKPOINT_KEY) or {}).get("wandb_run_id") if isinstance(checkpoint, dict) else None


def _settings(init_args: Optional[dict]) -> str:
    return ", ".join(f"{k}={v}" for k, v in (init_args or {}).items())


def _check_same_model(path: str, theirs: Optional[dict], ours: Optional[dict]) -> None:
    """Refuse a checkpoint whose run built another rule class or another network."""
    if not theirs or not ours:
        return
    if theirs.get("class_path") != ours.get("class_path"):
        raise CheckpointError(
            f"--ckpt_path {path} was written by a run of {theirs.get('class_path')}, and this configuration builds "
            f"{ours.get('class_path')}: resume with the run's own config (its config.yaml), or start a new run")
    their_net, our_net = theirs.get("net") or {}, ours.get("net") or {}
    their_args, our_args = their_net.get("init_args") or {}, our_net.get("init_args") or {}
    differ = sorted(k for k in set(their_args) | set(our_args) if their_args.get(k) != our_args.get(k))
    if their_net.get("class_path") != our_net.get("class_path") or differ:
        def shown(net, args):
            return f"{net.get('class_path')}({_settings({k: args.get(k) for k in differ})})"

        raise CheckpointError(
            f"--ckpt_path {path} was written with the network {shown(their_net, their_args)}, and this "
            f"configuration builds {shown(our_net, our_args)}: resume with the run's own network settings (its "
            "config.yaml), or start a new run")


def model_record(model_config) -> Optional[dict]:
    """What :func:`record_run` keeps of a ``model`` config section: the rule's ``class_path``
    and the network's ``class_path`` and ``init_args`` (plain values)."""
    if model_config is None:
        return None
    as_dict = model_config.as_dict() if hasattr(model_config, "as_dict") else dict(model_config)
    net = (as_dict.get("init_args") or {}).get("net")
    net = net if isinstance(net, dict) else {}
    return {"class_path": as_dict.get("class_path"),
            "net": {"class_path": net.get("class_path"), "init_args": dict(net.get("init_args") or {})}}


def record_run(trainer, checkpoint: Dict[str, Any], model_config: Optional[dict] = None) -> None:
    """Store in ``checkpoint`` the id of the trainer's W&B run (if any) and the rule and
    network of this run (``model_config``, from :func:`model_record`)."""
    if model_config:
        checkpoint.setdefault(CHECKPOINT_KEY, {})["model"] = model_config
    record_wandb_run(trainer, checkpoint)


def record_wandb_run(trainer, checkpoint: Dict[str, Any]) -> None:
    """Store the id of the trainer's W&B run (if any) in ``checkpoint``."""
    for logger in trainer.loggers:
        if _is_wandb(logger) and trainer.is_global_zero and logger.version:
            checkpoint.setdefault(CHECKPOINT_KEY, {})["wandb_run_id"] = str(logger.version)
            return

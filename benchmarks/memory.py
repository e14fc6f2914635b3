"""Peak memory of one step above what is resident before it.

CPU: the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` before the step) above the resident set before the step, in a
fresh Python process whose glibc mmap threshold is fixed at 64 KiB before any tensor
exists, so that freed tensors leave the resident set (``None`` where the kernel offers
no reset). CUDA: ``torch.cuda.max_memory_allocated()`` above ``memory_allocated()``
before the step, in this process.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, List, Optional

import torch

from lightning_gait.malloc import M_MMAP_THRESHOLD, mallopt
from lightning_gait.targets import NonFiniteError

from .variants import VARIANTS, StepRunner, sync

__all__ = ["peak_step_mb", "memory_phase"]


def _configure_malloc() -> bool:
    """Fix glibc's mmap threshold so that large freed tensors leave the resident set."""
    return mallopt(M_MMAP_THRESHOLD, 64 * 1024)


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_step_mb(runner: StepRunner) -> Optional[float]:
    """Memory one step of ``runner`` needs above what is resident before it (see the module docstring)."""
    if runner.device.type == "cuda":
        sync(runner.device)
        runner.optimizer.zero_grad(set_to_none=True)
        before = torch.cuda.memory_allocated(runner.device)
        torch.cuda.reset_peak_memory_stats(runner.device)
        runner.step()
        sync(runner.device)
        return (torch.cuda.max_memory_allocated(runner.device) - before) / 2**20
    runner.optimizer.zero_grad(set_to_none=True)
    if not _reset_peak_rss():
        return None
    before = _proc_status_kb("VmRSS")
    runner.step()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024


def memory_phase(cfg, rows: List[dict], log: Callable[[str], None]) -> None:
    """Fill ``peak_step_mb`` of every result row.

    CPU rows are measured in one fresh Python process whose allocator is set up before any
    tensor exists (:func:`_memory_worker`): in this process the heap already holds freed
    blocks that a step would reuse unseen. CUDA rows are measured here.
    """
    specs = []
    for k, row in enumerate(rows):
        row["peak_step_mb"] = None
        if row.get("status") != "ok":
            continue
        spec = dict(index=k, variant=row["variant"], width=row["width"], depth=row["depth"], batch=cfg.batch,
                    in_features=cfg.in_features, num_classes=cfg.num_classes, dtype=row["dtype"],
                    device=row["device"], seed=cfg.seed)
        if row["device"] == "cuda":
            row["peak_step_mb"] = _measure_spec(spec)
        else:
            specs.append(spec)
    if not specs:
        return
    import subprocess

    code = "from benchmarks.memory import _memory_worker; _memory_worker()"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    payload = json.dumps({"threads": torch.get_num_threads(), "specs": specs})
    proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log(f"  memory worker failed: {proc.stderr.strip()[-500:]}")
        return
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            index, value = line[5:].split()
            rows[int(index)]["peak_step_mb"] = None if value == "None" else float(value)


def _measure_spec(spec: dict) -> Optional[float]:
    runner = StepRunner(VARIANTS[spec["variant"]], width=spec["width"], depth=spec["depth"], batch=spec["batch"],
                        in_features=spec["in_features"], num_classes=spec["num_classes"],
                        dtype=getattr(torch, spec["dtype"]), device=torch.device(spec["device"]),
                        seed=spec["seed"])
    try:
        for _ in range(2):  # the optimizer state and any cached inverse exist before the measured step
            runner.step()
        return peak_step_mb(runner)
    except (NonFiniteError, RuntimeError):
        return None


def _memory_worker() -> None:
    """Entry point of the memory process: specs as JSON on stdin, ``PEAK index MB`` lines out."""
    _configure_malloc()
    payload = json.loads(sys.stdin.read())
    torch.set_num_threads(int(payload["threads"]))
    for spec in payload["specs"]:
        print(f"PEAK {spec['index']} {_measure_spec(spec)}", flush=True)

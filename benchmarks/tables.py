"""The benchmark's markdown: step time and ratio per point, the split, the Lightning path."""
from __future__ import annotations

from typing import Dict, List, Tuple

from .split import RANGE_KEYS

__all__ = ["format_markdown"]


def _fmt_load(load) -> str:
    return "-" if not load else "/".join(f"{x:.2f}" for x in load)


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def _header(meta: dict) -> List[str]:
    lines = [f"Machine: {meta.get('cpu')} ({meta.get('torch_threads')} torch threads), "
             f"torch {meta.get('torch')}, CUDA: {meta.get('cuda')}. "
             f"Load average at start/end: {_fmt_load(meta.get('loadavg_start'))} / "
             f"{_fmt_load(meta.get('loadavg_end'))}."]
    # the load at the start is other processes' (at the end it includes this benchmark's own)
    loads = (meta.get("loadavg_start") or [])[:1]
    if loads and meta.get("cpu_count") and max(loads) > 0.5 * meta["cpu_count"]:
        lines.append("")
        lines.append(f"**Warning: other processes kept the machine busy (1-minute load {max(loads):.1f} on "
                     f"{meta['cpu_count']} cores); multi-threaded BLAS timings under contention swing by "
                     "several times. Rerun on a quiet machine, or compare with --threads 1.**")
    lines.append("")
    return lines


def _step_tables(results: List[dict]) -> List[str]:
    lines = []
    groups: Dict[Tuple, List[dict]] = {}
    for r in results:
        groups.setdefault((r["device"], r["dtype"]), []).append(r)
    for (dev, dt), rows in groups.items():
        lines.append(f"### Step time, {dev}, {dt}, batch {rows[0]['batch']}")
        lines.append("")
        lines.append("| width | depth | variant | median ms | IQR ms | ratio to BP | peak step MB | state MB |")
        lines.append("|---:|---:|---|---:|---:|---:|---:|---:|")
        for r in rows:
            iqr = f"{_fmt(r.get('q1_ms'))}-{_fmt(r.get('q3_ms'))}"
            ratio = _fmt(r.get("ratio"), ".2f")
            if r["variant"] == r["baseline"]:
                ratio = "1 (baseline)"
            status = "" if r.get("status") == "ok" else f" ({r.get('status')[:40]})"
            lines.append(f"| {r['width']} | {r['depth']} | {r['label']}{status} | {_fmt(r.get('median_ms'))} | "
                         f"{iqr} | {ratio} | {_fmt(r.get('peak_step_mb'))} | {_fmt(r.get('state_mb'))} |")
        lines.append("")
    return lines


def _split_table(splits: List[dict]) -> List[str]:
    keys = list(RANGE_KEYS.values())
    lines = ["### Split of `training_step` (ms per step, profiler ranges, CPU time; mean of the profiled steps)",
             "",
             "Ranges of `lightning_gait.rules.base.STEP_RANGES` (GAIT-prop's `inverses` lie inside "
             "`targets`). `sum`: the outermost ranges; `other`: the rest of `training_step` and its "
             "Lightning hooks. `bare step`: the median of the timed step above (`local_gradients`, "
             "penalty, optimizer).",
             "",
             "| device | dtype | width | depth | variant | " + " | ".join(keys)
             + " | sum | other | training_step | bare step |",
             "|---|---|---:|---:|---|" + "---:|" * (len(keys) + 4)]
    for s in splits:
        lines.append(f"| {s['device']} | {s['dtype']} | {s['width']} | {s['depth']} | {s['variant']} | "
                     + " | ".join(_fmt(s.get(f"{k}_ms")) for k in keys)
                     + f" | {_fmt(s.get('sum_ms'))} | {_fmt(s.get('other_ms'))} | {_fmt(s.get('step_ms'))} | "
                     f"{_fmt(s.get('bare_step_median_ms'))} |")
    lines.append("")
    device_rows = [s for s in splits if any(f"{k}_device_ms" in s for k in keys)]
    if device_rows:
        lines.append("Device time of the kernels launched inside each range (ms per step):")
        lines.append("")
        lines.append("| device | dtype | width | depth | variant | " + " | ".join(keys) + " |")
        lines.append("|---|---|---:|---:|---|" + "---:|" * len(keys))
        for s in device_rows:
            lines.append(f"| {s['device']} | {s['dtype']} | {s['width']} | {s['depth']} | {s['variant']} | "
                         + " | ".join(_fmt(s.get(f"{k}_device_ms")) for k in keys) + " |")
        lines.append("")
    return lines


def _lightning_table(rows: List[dict]) -> List[str]:
    lines = ["### Lightning `training_step` (Trainer) against the bare step, interleaved", "",
             "| device | dtype | width | depth | variant | Lightning ms | bare ms | ratio |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['dtype']} | {r['width']} | {r['depth']} | {r['variant']} | "
                     f"{_fmt(r['lightning_ms'])} | {_fmt(r['bare_ms'])} | {_fmt(r['ratio'], '.2f')} |")
    lines.append("")
    return lines


def format_markdown(result: dict) -> str:
    """Tables: step time and ratio per point; the split; the Lightning path."""
    lines = _header(result.get("meta", {}))
    lines += _step_tables(result.get("results", []))
    if result.get("split"):
        lines += _split_table(result["split"])
    if result.get("lightning"):
        lines += _lightning_table(result["lightning"])
    return "\n".join(lines)

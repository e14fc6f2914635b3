"""The benchmark runs on a tiny setting and writes the JSON and markdown it promises.

No timing is asserted here: speed goals live in the benchmark's own output.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks import bench
from benchmarks.bench import VARIANTS, BenchConfig, StepRunner, penalty_gradients, run_benchmark

TINY = [
    "--widths", "24", "--depths", "2", "--width-sweep-depth", "2", "--depth-sweep-width", "24",
    "--in-features", "32", "--batch", "8", "--dtypes", "float64", "float32", "--devices", "cpu",
    "--variants", "backprop", "gait_n", "gait_n_cached", "gait_n_penalty",
    "--repeats", "3", "--min-repeats", "1", "--warmup", "1", "--split-repeats", "1",
    "--lightning-steps", "2", "--lightning-variants", "gait_n", "--no-memory",
]


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    md = tmp_path / "out" / "bench.md"
    bench.main(TINY + ["--json", str(path), "--markdown", str(md)])
    result = json.loads(path.read_text())
    assert set(result) == {"meta", "results", "split", "lightning"}
    assert {"command", "torch", "cpu", "torch_threads", "config", "step", "ratio", "peak_step_mb"} <= set(
        result["meta"])
    rows = result["results"]
    # one row per dtype and variant at the single point (24, 2)
    assert sorted((r["dtype"], r["variant"]) for r in rows) == sorted(
        (d, v) for d in ("float64", "float32") for v in ("backprop", "gait_n", "gait_n_cached", "gait_n_penalty"))
    for r in rows:
        assert r["status"] == "ok", r
        assert (r["width"], r["depth"], r["batch"], r["device"]) == (24, 2, 8, "cpu")
        assert r["median_ms"] > 0 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
        assert r["ratio"] > 0 and math.isfinite(r["ratio"])
        assert r["state_mb"] > 0
        assert "peak_step_mb" not in r  # --no-memory
        if r["variant"] == "backprop":
            assert r["ratio"] == 1.0
    split_keys = {"forward_ms", "inverses_ms", "target_pass_ms", "local_gradients_ms", "penalty_ms",
                  "optimizer_ms", "sum_ms", "step_median_ms"}
    assert len(result["split"]) == len(rows)
    for s in result["split"]:
        assert split_keys <= set(s)
        assert s["sum_ms"] == pytest.approx(sum(s[k] for k in split_keys - {"sum_ms", "step_median_ms"}))
        if s["variant"] == "backprop":
            assert s["inverses_ms"] == 0.0 and s["target_pass_ms"] == 0.0
        if s["variant"] != "gait_n_penalty":
            assert s["penalty_ms"] < s["sum_ms"]
    assert sorted((r["dtype"], r["variant"]) for r in result["lightning"]) == [("float32", "gait_n"),
                                                                             ("float64", "gait_n")]
    for r in result["lightning"]:
        assert r["steps"] == 2 and r["lightning_ms"] > 0 and r["bare_ms"] > 0
    text = md.read_text()
    assert "### Step time, cpu, float64" in text and "### Split of one step" in text
    assert "GAIT-N + penalty" in text
    assert "### Step time, cpu, float32" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_memory_phase_reports_the_step_peak():
    cfg = BenchConfig(batch=64, in_features=2048, num_classes=4)
    rows = [dict(device="cpu", dtype="float64", width=128, depth=2, variant=v, status="ok")
            for v in ("backprop", "gait_n_penalty")]
    rows.append(dict(device="cpu", dtype="float64", width=128, depth=2, variant="gait_n", status="failed"))
    messages = []
    bench._memory_phase(cfg, rows, messages.append)
    assert messages == []
    bp, penalty, failed = (r["peak_step_mb"] for r in rows)
    # a step allocates at least the new weight gradient of layer 1 (2048 x 128 float64 = 2 MiB); the
    # kernel's resident-set counters lag by up to a few hundred KiB
    assert bp >= 1.5 and penalty >= 1.5
    assert failed is None


def test_bench_step_installs_what_training_step_installs():
    """The timed step and Lightning's training_step put the same gradient into .grad."""
    variant = VARIANTS["gait_n_penalty"]
    kwargs = dict(width=12, depth=2, batch=6, in_features=10, num_classes=3, dtype=torch.float64,
                  device=torch.device("cpu"), seed=3)
    runner = StepRunner(variant, **kwargs)
    grads = runner.rule.local_gradients(runner.x, runner.y)
    penalty = penalty_gradients(runner.net, runner.rule.ortho_weight)
    # the reference: the local objective plus the surrogate, through autograd, as training_step
    from lightning_gait.networks import orthogonality_surrogate

    out = runner.rule.local_objective(runner.x, runner.y)
    surrogate, _ = orthogonality_surrogate(runner.net)
    total = out.objective + runner.rule.ortho_weight * surrogate
    reference = torch.autograd.grad(total, [layer.weight for layer in runner.net.layers])
    for i, (gw, _) in enumerate(grads):
        expected = gw + penalty[i] if i in penalty else gw
        assert torch.allclose(expected, reference[i], rtol=1e-10, atol=1e-12)
    assert set(penalty) == set(runner.net.square_layer_indices)


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        BenchConfig(variants=["nope"]).validate()
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtypes=["float16"]).validate()
    cfg = BenchConfig()
    assert (500, 6) in cfg.points() and (2048, 6) in cfg.points() and (500, 12) in cfg.points()
    assert len(cfg.points()) == 6  # (500, 6) is on both sweeps
    # every timed variant brings its baseline along
    assert "backprop_s" in cfg.variants_at((500, 6))
    assert cfg.variants_at((1024, 6))[0] == "backprop"


# ---------------------------------------------------------------- the floor (bench_floor)
def test_floor_report_arithmetic():
    """Floors follow T_gait >= T_bp + S * delta with S = depth square layers; added terms
    use the fast timings, the subtracted product the slow one; the cached schemes take
    the fewest refinements that the drift model allows."""
    from benchmarks.bench_floor import floor_report

    low = {"product": 1.0, "square_product": 2.0, "lu_factor": 1.5, "lu_solve": 2.0, "inv": 5.0}
    high = {k: v * 1.2 for k, v in low.items()}
    low32 = {k: v / 2 for k, v in low.items()}
    bp = {2: 20.0, 6: 40.0, 12: 70.0}
    rep = floor_report(low, high, bp, dtype="float64", low32=low32, drift=2e-3, tolerance=1.5e-6)
    schemes = rep["schemes"]
    assert schemes["exact_lu"]["delta"] == pytest.approx(1.5 + 2.0 - 1.2)
    # 2e-3^2 = 4e-6 > 1.5e-6, 2e-3^3 = 8e-9: two refinements
    assert schemes["cached_free_upkeep"] == {"delta": pytest.approx(4.0), "refinements": 2}
    # Newton-Schulz squares the drift: (4e-6)^1 > 1.5e-6, (4e-6)^2 ok: one refinement
    assert schemes["cached_newton_schulz"]["delta"] == pytest.approx(2 * 2.0 + 2 * 1.0)
    # refresh: c = 2 allows (K 2e-3)^3 <= 1.5e-6, K <= 5: 4 + 5/5 = 5.0; c = 3: K <= 17: 6 + 5/17
    assert schemes["cached_refresh"]["delta"] == pytest.approx(5.0)
    assert schemes["cached_refresh"]["refresh_every"] == 5
    assert schemes["cached_mixed"]["delta"] == pytest.approx(0.5 - 1.2 + 2 * (1.0 + 0.5))
    assert rep["floor_ratio"]["exact_lu"][6] == pytest.approx(1 + 6 * 2.3 / 40)
    allowed_fast = rep["allowed_delta_ms"]["1.3x_at_depth_6"]
    assert 1 + 6 * allowed_fast / 40 == pytest.approx(1.3)
    allowed_depth = rep["allowed_delta_ms"]["depth_12_within_10pct_of_depth_2"]
    # at exactly the allowed delta, depth 12's ratio is 1.1x depth 2's
    assert (1 + 12 * allowed_depth / 70) / (1 + 2 * allowed_depth / 20) == pytest.approx(1.1)
    # float32: the looser tolerance lets one refinement do, and there is no mixed scheme
    rep32 = floor_report(low32, low32, bp, dtype="float32", drift=2e-3)
    assert rep32["tolerance"] == 1e-5 and rep32["schemes"]["cached_free_upkeep"]["refinements"] == 1
    assert "cached_mixed" not in rep32["schemes"]


def test_floor_cli_runs_small(tmp_path, capsys):
    from benchmarks import bench_floor

    out = tmp_path / "floor.json"
    result = bench_floor.main(["--width", "32", "--batch", "16", "--dtypes", "float64", "--repeats", "2",
                               "--json", str(out)])
    entry = result["entries"][0]
    assert set(entry["backprop_ms"]) == {2, 6, 12}
    prims = entry["primitives_ms"]
    for name in ("product", "lu_factor", "lu_solve"):
        pair = (prims["alone"][name], prims["interleaved"][name])
        assert prims["low"][name] == min(pair) > 0 and prims["high"][name] == max(pair)
    text = capsys.readouterr().out
    assert "exact_lu" in text and "cached_free_upkeep" in text and "Largest delta" in text
    assert json.loads(out.read_text())["entries"][0]["dtype"] == "float64"

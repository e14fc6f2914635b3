"""The benchmark runs on a tiny setting and writes the JSON and markdown it promises.

No timing is asserted here: speed goals live in the benchmark's own output.
"""
from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from benchmarks import bench, memory
from benchmarks.bench import BenchConfig
from benchmarks.split import RANGE_KEYS, aggregate_ranges, profile_split
from benchmarks.variants import VARIANTS, StepRunner
from lightning_gait.networks import orthogonality_surrogate

TINY = [
    "--widths", "24", "--depths", "2", "--width-sweep-depth", "2", "--depth-sweep-width", "24",
    "--in-features", "32", "--batch", "8", "--dtypes", "float64", "float32", "--devices", "cpu",
    "--variants", "backprop", "gait_n", "gait_n_cached", "gait_n_penalty",
    "--repeats", "3", "--min-repeats", "1", "--warmup", "1", "--split-repeats", "1",
    "--lightning-steps", "2", "--lightning-variants", "gait_n", "--no-memory",
]


@pytest.mark.e2e  # a whole benchmark
def test_cli_writes_json_and_markdown(tmp_path, capfd):
    path = tmp_path / "out" / "bench.json"
    md = tmp_path / "out" / "bench.md"
    bench.main(TINY + ["--json", str(path), "--markdown", str(md)])
    result = json.loads(path.read_text())
    assert set(result) == {"meta", "results", "split", "lightning"}
    assert {"command", "torch", "cpu", "torch_threads", "config", "step", "split", "ratio", "peak_step_mb"} <= set(
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
    ranges = [f"{k}_ms" for k in RANGE_KEYS.values()]
    assert len(result["split"]) == len(rows)
    for s in result["split"]:
        assert set(ranges) | {"sum_ms", "other_ms", "step_ms", "bare_step_median_ms", "steps"} <= set(s)
        assert s["steps"] == 1 and s["forward_ms"] > 0 and s["backward_ms"] > 0 and s["optimizer_ms"] > 0
        assert 0 < s["sum_ms"] <= s["step_ms"]
        # ranges nest (inverses inside targets): the sum counts the outermost ones
        outer = s["sum_ms"] - sum(s[k] for k in ranges if k != "inverses_ms")
        assert outer == pytest.approx(0, abs=1e-6)
        if s["variant"] == "backprop":
            assert s["inverses_ms"] == 0.0 and s["targets_ms"] == 0.0
        else:
            assert 0 < s["inverses_ms"] < s["targets_ms"]
        assert (s["penalty_ms"] > 0) == (s["variant"] == "gait_n_penalty")
    assert sorted((r["dtype"], r["variant"]) for r in result["lightning"]) == [("float32", "gait_n"),
                                                                             ("float64", "gait_n")]
    for r in result["lightning"]:
        assert r["steps"] == 2 and r["lightning_ms"] > 0 and r["bare_ms"] > 0
    text = md.read_text()
    assert "### Step time, cpu, float64" in text and "### Split of `training_step`" in text
    assert "GAIT-N + penalty" in text
    printed = capfd.readouterr()  # file descriptors: the profiler's C++ logging included
    assert "### Step time, cpu, float32" in printed.out
    for noise in ("profiler_start", "USDT", "gpuGetDeviceCount", "litlogger", "💡"):
        assert noise not in printed.out + printed.err, noise


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_memory_phase_reports_the_step_peak():
    cfg = BenchConfig(batch=64)
    rows = [dict(device="cpu", dtype="float64", width=128, depth=2, variant=v, status="ok")
            for v in ("backprop", "gait_n_penalty")]
    rows.append(dict(device="cpu", dtype="float64", width=128, depth=2, variant="gait_n", status="failed"))
    messages = []
    memory.memory_phase(cfg, rows, messages.append)
    assert messages == []
    bp, penalty, failed = (r["peak_step_mb"] for r in rows)
    # a step allocates at least the new weight gradient of layer 1 (3072 x 128 float64 = 3 MiB); the
    # kernel's resident-set counters lag by up to a few hundred KiB
    assert bp >= 1.5 and penalty >= 1.5
    assert failed is None


@pytest.mark.parametrize("network", ["mlp", "cnn"])
def test_bench_step_installs_what_training_step_installs(network):
    """The timed step puts into .grad the gradient of training_step's objective (local
    objective + penalty), on the MLP and on the CNN (image-shaped batches)."""
    from benchmarks.conv_step_time import CONV_VARIANTS

    if network == "mlp":
        runner = StepRunner(VARIANTS["gait_n_penalty"], width=12, depth=2, batch=6,
                            dtype=torch.float64, device=torch.device("cpu"), seed=3)
    else:
        runner = StepRunner(CONV_VARIANTS["conv_gait_n"], width=None, depth=None, batch=3,
                            dtype=torch.float64, device=torch.device("cpu"), seed=2)
        assert runner.x.shape == (3, 3, 32, 32)
    assert runner.rule.ortho_weight == 100.0 and runner.rule.normalize
    runner.install_gradients()
    out = runner.rule.local_objective(runner.x, runner.y)
    surrogate, _ = orthogonality_surrogate(runner.net)
    params = [p for pair in runner.net.layer_parameters() for p in pair]
    reference = torch.autograd.grad(out.objective + runner.rule.ortho_weight * surrogate, params)
    for p, expected in zip(params, reference):
        assert torch.allclose(p.grad, expected, rtol=1e-10, atol=1e-12)


def test_variants_are_regimes_on_one_network():
    """Every variant is its regime's rule on the same square-output network (same seed, same weights)."""
    kwargs = dict(width=16, depth=2, batch=4, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    bp = StepRunner(VARIANTS["backprop"], **kwargs)
    cached = StepRunner(VARIANTS["gait_n_cached"], **kwargs)
    assert bp.net.square_output and bp.rule.ortho_weight == 0.0
    assert cached.rule.target_mode == "difference" and not cached.rule.inverse_strategy.exact
    assert cached.rule.ortho_weight == 0.0 and (cached.net.in_features, cached.net.num_classes) == (3072, 10)
    assert all(torch.equal(a, b) for a, b in zip(bp.net.parameters(), cached.net.parameters()))
    assert torch.equal(bp.x, cached.x) and bp.x.dtype == torch.float64
    assert VARIANTS["gait_sn"].label == "GAIT-SN" and VARIANTS["gait_sn"].baseline == "backprop_s"


def test_split_reads_the_profiler_ranges_of_training_step():
    runner = StepRunner(VARIANTS["gait_n_penalty"], width=16, depth=2, batch=8,
                        dtype=torch.float32, device=torch.device("cpu"), seed=0)
    split = profile_split(runner, steps=2, warmup=1)
    assert all(split[f"{k}_ms"] > 0 for k in RANGE_KEYS.values())
    assert split["sum_ms"] == pytest.approx(sum(split[f"{k}_ms"] for k in RANGE_KEYS.values())
                                            - split["inverses_ms"])
    assert split["other_ms"] == pytest.approx(split["step_ms"] - split["sum_ms"])
    assert runner.rule.global_step == 3  # the real training loop ran


def test_aggregate_ranges_counts_nested_ranges_once():
    class Event:
        def __init__(self, name, us, parent=None):
            self.name, self.cpu_time_total, self.cpu_parent = name, us, parent

    step = Event("ProfilerStep", 900.0)
    targets = Event("lightning_gait.targets", 400.0, step)
    events = [step, Event("lightning_gait.forward", 100.0, step), targets,
              Event("lightning_gait.inverses", 150.0, Event("aten::mm", 160.0, targets))]
    out = aggregate_ranges(events, steps=2)
    assert (out["forward_ms"], out["targets_ms"], out["inverses_ms"]) == (0.05, 0.2, 0.075)
    assert out["sum_ms"] == pytest.approx(0.25) and out["penalty_ms"] == 0.0
    assert not any(k.endswith("_device_ms") for k in out)


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


@pytest.mark.e2e
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


def test_conv_benchmark_times_the_cnn_regimes(tmp_path, capsys):
    """The CNN benchmark builds conf/conv/ regimes on one network, steps on image-shaped
    batches, and writes one row per dtype and variant with its paired ratio to conv BP."""
    from benchmarks import conv_step_time

    out = tmp_path / "conv.csv"
    conv_step_time.main(["--dtypes", "float32", "--batch", "2", "--repeats", "2", "--warmup", "0", "--csv", str(out)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["conv_bp", "conv_gait_n", "conv_gait_n_diff"]
    assert all(r["dtype"] == "float32" and r["repeats"] == "2" and r["parameters"] == "362624" for r in rows)
    assert float(rows[0]["ratio"]) == 1.0
    assert all(math.isfinite(float(r["ratio"])) and float(r["ratio"]) > 0 for r in rows[1:])
    assert "conv_gait_n_diff" in capsys.readouterr().out


def test_checks_overhead_runs_small(capsys):
    from benchmarks import checks_overhead

    result = checks_overhead.main(["--width", "16", "--depth", "3", "--batch", "8", "--in-features", "12",
                                   "--steps", "2"])
    assert result["step_ms"] > 0 and result["checks_ms"] > 0 and result["singular_ms"] > 0
    assert math.isclose(result["checks_share"], result["checks_ms"] / result["step_ms"])
    assert "singular-layer flags" in capsys.readouterr().out


def test_the_variants_are_config_stacks_of_shipped_configs(tmp_path):
    """benchmarks/variants.yaml: every variant's stack names shipped configs, every set names its
    variants, and a set naming an unknown variant is refused by name."""
    from benchmarks.variants import load_variants
    from lightning_gait.configs import find_config

    for group in ("mlp", "conv"):
        variants, sets = load_variants(group)
        assert sets and all(set(names) <= set(variants) for names in sets.values())
        for variant in variants.values():
            assert all(find_config(config) is not None for config in variant.stack), variant
            assert variant.baseline in variants
    bad = tmp_path / "variants.yaml"
    bad.write_text("mlp:\n  baseline: a\n  variants:\n    a: {stack: [bp]}\n  sets:\n    quick: [a, b]\n")
    with pytest.raises(ValueError, match=r"does not define: \['b'\]"):
        load_variants("mlp", bad)


@pytest.mark.e2e  # a whole benchmark
def test_conv_benchmark_times_training_step_inside_lightning(tmp_path):
    """--lightning: the variants take turns under a Trainer; one row per variant with the median
    step, the paired ratio to conv BP over rounds and its range."""
    from benchmarks import conv_step_time

    out = tmp_path / "conv.csv"
    conv_step_time.main(["--dtypes", "float32", "--lightning", "--variants", "conv_bp", "conv_gait_n_orthogonal",
                         "--batch", "2", "--rounds", "2", "--steps", "3", "--csv", str(out)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["variant"], r["repeats"], r["steps"]) for r in rows] == \
        [("lightning", "conv_bp", "2", "4"), ("lightning", "conv_gait_n_orthogonal", "2", "4")]
    assert float(rows[0]["ratio"]) == float(rows[0]["ratio_min"]) == 1.0
    ratio, low, high = (float(rows[1][k]) for k in ("ratio", "ratio_min", "ratio_max"))
    assert 0 < low <= ratio <= high and math.isfinite(high)
    assert rows[1]["overrides"] == "--config variants/orthogonal"

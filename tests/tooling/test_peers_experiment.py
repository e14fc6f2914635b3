"""experiments/peers.py: its diagnostics on small networks, and one sweep on generated CIFAR-10."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from _helpers import default_dtype
from lightning_gait import Backprop, FeedbackAlignment, GAITProp, InvertibleMLP, TargetProp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments import peers  # noqa: E402


def small_net(activation: str = "leaky_relu", square_output: bool = True) -> InvertibleMLP:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return InvertibleMLP(in_features=12, width=10, depth=3, num_classes=4, activation=activation,
                             square_output=square_output)


def batches(n: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2 * n, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2 * n,), generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def test_backprop_has_the_whole_descent_and_correlation_one():
    row = peers.layer_diagnostics(Backprop(small_net()), *batches())
    layers = 4
    assert sum(row[f"descent_{k}"] for k in range(1, layers + 1)) == pytest.approx(1.0, rel=1e-12)
    assert all(row[f"corr_{k}"] == pytest.approx(1.0, abs=1e-12) for k in range(1, layers + 1))
    assert row["ortho"] < 1e-12 and row["cond"] == pytest.approx(1.0, abs=1e-9)
    assert all(row[f"wnorm_{k}"] == pytest.approx(1.0, abs=1e-12) for k in range(2, layers + 1))
    assert "e_1" not in row  # no targets


def test_target_diagnostics_tell_roundoff_from_signal():
    """The paper's form with a tiny gamma loses the layers near the input to round-off; a larger gamma does not."""
    x, y, x2, y2 = batches()
    tiny = peers.layer_diagnostics(GAITProp(small_net("smooth_leaky_relu"), gamma=1e-6), x, y, x2, y2)
    large = peers.layer_diagnostics(GAITProp(small_net("smooth_leaky_relu"), gamma=1e-1), x, y, x2, y2)
    assert tiny["roundoff_1"] > 0.5 and tiny["corr_1"] < 0.5
    assert large["roundoff_1"] < 1e-3 and large["corr_1"] > 0.999
    assert large["roundoff_4"] == 0.0  # the output layer's difference is formed exactly
    exact = peers.layer_diagnostics(GAITProp(small_net("smooth_leaky_relu"), gamma=1e-6, target_mode="difference"),
                                    x, y, x2, y2)
    assert exact["roundoff_1"] == 0.0 and exact["corr_1"] > 0.999


def test_tp_targets_cross_the_kink_and_fa_has_no_targets():
    x, y, x2, y2 = batches()
    tp = peers.layer_diagnostics(TargetProp(small_net(), output_step=0.5), x, y, x2, y2)
    assert 0.0 < tp["cross_1"] <= 1.0 and tp["e_1"] > tp["e_3"]
    fa = peers.layer_diagnostics(FeedbackAlignment(small_net(square_output=False)), x, y, x2, y2)
    assert "e_1" not in fa and -1.0 <= fa["bcos_1"] <= 1.0


def test_sweep_writes_one_csv_per_peer_and_replaces_a_rerun(tiny_cifar_root, tmp_path):
    args = ["--data-dir", str(tiny_cifar_root), "--out", str(tmp_path), "sweep", "fa", "--settings", "config",
            "--steps", "2", "--probe-every", "1", "--eval-images", "16"]
    peers.main(args)
    peers.main(args)
    with open(tmp_path / "fa.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert {r["setting"] for r in rows} == {"config"} and {r["budget"] for r in rows} == {"2"}
    assert rows[-1]["eval_images"] == "64" and 0.0 <= float(rows[-1]["test_acc"]) <= 1.0
    assert "fa:(config)" == rows[0]["overrides"]

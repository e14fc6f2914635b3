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


def test_run_trains_the_grids_stacks_into_run_folders_with_their_configs(tiny_cifar_root, tmp_path, monkeypatch, capsys):
    """``peers run GRID`` trains each stack for its steps with the probes, writes RUN_s0/metrics.csv and
    the config.yaml fit accepts (a rerun replaces the curve); ``probe`` writes init.csv per stack and
    layer; ``table`` reads the final accuracies back."""
    import yaml

    from experiments import stacks
    from experiments.common import resolved_config

    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "tiny.yaml").write_text(
        "stacks:\n  - [fa, variants/lr_1e-4]\nseeds: [0]\n"
        "args: [--data.val_size, '0', --trainer.max_steps, '2', --model.init_args.net.init_args.width, '16',"
        " --model.init_args.net.init_args.depth, '2', --data.verify_checksums, 'false']\n"
        "probe:\n  - [tp, variants/output_step_5e-2]\n")
    monkeypatch.setattr(stacks, "GRIDS_DIR", grids)
    results = tmp_path / "results"
    args = ["run", "tiny", "--data-dir", str(tiny_cifar_root), "--results", str(results), "--eval-images", "16"]
    assert peers.main(args) == 0
    assert peers.main(args) == 0
    folder = results / "tiny" / "fa+lr_1e-4_s0"
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 2]  # probes every max(49, steps // 4) steps and at the end
    assert {r["setting"] for r in rows} == {"fa+lr_1e-4"} and {r["budget"] for r in rows} == {"2"}
    assert rows[-1]["eval_images"] == "64" and 0.0 <= float(rows[-1]["test_acc"]) <= 1.0
    assert rows[0]["overrides"] == "fa+variants/lr_1e-4"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == 1e-4 and config["trainer"]["max_steps"] == 2
    assert config["data"]["init_args"]["val_size"] == 0 and config["seed_everything"] == 0
    assert resolved_config(["--config", str(folder / "config.yaml")])  # fit accepts it

    assert peers.main(["probe", "tiny", "--data-dir", str(tiny_cifar_root), "--results", str(results)]) == 0
    with open(results / "tiny" / "init.csv", newline="") as f:
        init = list(csv.DictReader(f))
    assert [r["setting"] for r in init] == ["tp+output_step_5e-2"] * 3 and [r["layer"] for r in init] == ["1", "2", "3"]
    capsys.readouterr()
    assert peers.main(["table", "tiny", "--results", str(results)]) == 0
    assert f"| fa+lr_1e-4_s0 | 2 | {100 * float(rows[-1]['test_acc']):.2f} |" in capsys.readouterr().out
    assert peers.main(["table", "missing", "--results", str(results)]) == 2


def test_the_committed_grid_names_every_committed_run():
    """Every committed peers curve is a stack of experiments/grids/peers.yaml, and every probed stack is in init.csv."""
    from experiments import stacks
    from experiments.curves import grid_spec, runs

    repo = Path(__file__).resolve().parents[2]
    names = {r.name for r in stacks.load_grid("peers")}
    committed = runs(repo / "results" / "peers")
    assert committed and {r.name for r in committed} <= names
    with open(repo / "results" / "peers" / "init.csv", newline="") as f:
        probed = {r["setting"] for r in csv.DictReader(f)}
    assert probed == {stacks.run_name(s) for s in grid_spec("peers")["probe"]}

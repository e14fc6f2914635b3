"""The experiments' stacks are the runs their names say, and the readers (experiments.curves,
experiments.headline, experiments.conv_comparison) turn committed-format CSVs into the tables."""
from __future__ import annotations

import csv
import math

import pytest
import yaml

from experiments import conv_comparison, curves, headline, stacks
from experiments.common import stack_cli


def _settings(stack):
    cli = stack_cli(stack)
    return cli.model, cli.model.net, cli


@pytest.mark.parametrize("stack, expected", [
    (["bp"], dict(rule="Backprop", square_output=False, ortho_weight=0.0, precision="64-true")),
    (["bp", "variants/square_output"], dict(rule="Backprop", square_output=True, ortho_weight=0.0)),
    (["bp", "variants/square_output", "variants/ortho_100"], dict(rule="Backprop", square_output=True, ortho_weight=100.0)),
    (["bp", "variants/square_output", "variants/ortho_10"], dict(rule="Backprop", square_output=True, ortho_weight=10.0)),
    (["gait_norm"], dict(rule="GAITProp", square_output=True, ortho_weight=100.0, target_mode="absolute")),
    (["gait_norm", "variants/f32", "variants/difference"],
     dict(rule="GAITProp", ortho_weight=100.0, target_mode="difference", precision="32-true")),
    (["gait_norm", "variants/ortho_10"], dict(rule="GAITProp", ortho_weight=10.0, target_mode="absolute")),
    (["fa", "variants/lr_1e-4"], dict(rule="FeedbackAlignment", lr=1e-4)),
    (["conv/bp"], dict(rule="Backprop", square_output=True, ortho_weight=0.0, lr=1e-3, precision="32-true",
                       normalize_channels=True, val_size=5000)),
    (["conv/gait_norm"], dict(rule="GAITProp", ortho_weight=100.0, target_mode="difference", lr=1e-3,
                              precision="32-true", normalize_channels=True)),
    (["conv/bp", "variants/pixels", "variants/ortho_100"], dict(rule="Backprop", ortho_weight=100.0, lr=1e-3,
                                                                normalize_channels=False)),
    (["conv/gait_norm", "variants/pixels", "variants/ortho_1"], dict(rule="GAITProp", ortho_weight=1.0,
                                                                     target_mode="difference", normalize_channels=False)),
    (["conv/gait_norm", "variants/pixels", "variants/lr_1e-4"], dict(rule="GAITProp", lr=1e-4, precision="32-true")),
])
def test_stacks_are_what_their_names_say(stack, expected):
    rule, net, cli = _settings(stack)
    assert type(rule).__name__ == expected.pop("rule")
    for key, value in expected.items():
        owner = {"square_output": net, "normalize_channels": cli.datamodule, "val_size": cli.datamodule}.get(key, rule)
        actual = str(cli.trainer.precision) if key == "precision" else getattr(owner, key)
        assert actual == value, (stack, key)


def test_the_cnn_grid_pairs_differ_only_where_their_names_say():
    """The CNN's pixel runs differ from the standardized pair only in the inputs; the penalty runs from
    the compared GAIT-N run only in the penalty."""
    spec = curves.grid_spec("cnn")
    names = {stacks.run_name(s) for s in spec["stacks"]}
    for pair in conv_comparison.PAIRS.values():
        assert {n for n in pair if n} <= names
    base, _, cli = _settings(["conv/gait_norm", "variants/pixels"])
    for weight in (10, 1):
        other, _, _ = _settings(["conv/gait_norm", "variants/pixels", f"variants/ortho_{weight}"])
        assert other.ortho_weight == weight
        for key in ("lr", "target_mode", "normalize", "eta"):
            assert getattr(other, key) == getattr(base, key), key
    standardized, _, std_cli = _settings(["conv/gait_norm"])
    assert std_cli.datamodule.normalize_channels and not cli.datamodule.normalize_channels
    assert (standardized.lr, standardized.target_mode) == (base.lr, base.target_mode)


def test_matched_baseline_trains_the_gait_network():
    """BP's matched baseline has exactly GAIT-N's parameter shapes (same network, other rule)."""
    _, gait, _ = _settings(["gait_norm"])
    _, matched, _ = _settings(["bp", "variants/square_output", "variants/ortho_100"])
    _, plain, _ = _settings(["bp"])
    shapes = lambda net: [tuple(p.shape) for p in net.parameters()]  # noqa: E731
    assert shapes(matched) == shapes(gait) and shapes(plain) != shapes(gait)


# ---------------------------------------------------------------------- committed-format CSVs
def _write_metrics(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _write_run(folder, run_id, accuracies, *, val_size=0, ortho_weight=100.0, corr=None, test=None):
    """A run folder as committed: metrics.csv (one validation per epoch, diagnostics by step) and config.yaml."""
    rows = []
    for k, acc in enumerate(accuracies):
        if corr is not None:
            rows.append({"step": 10 * k + 5, "bp_corr/layer_1": corr[k], "bp_corr/layer_2": 0.999,
                         "bp_corr/layer_3": 1.0, "bp_norm_ratio/layer_1": 0.9, "ortho/layer_2": 0.01 * (k + 1)})
        row = {"step": 10 * k + 9, "epoch": k, "val/acc": acc}
        if test is not None:
            row["test/acc"] = test[k]
        rows.append(row)
    _write_metrics(folder / run_id / "metrics.csv", rows)
    config = {"model": {"init_args": {"ortho_weight": ortho_weight}}, "data": {"init_args": {"val_size": val_size}}}
    (folder / run_id / "config.yaml").write_text(yaml.safe_dump(config))


def test_read_epochs_counts_a_resumed_epoch_once_and_pairs_the_diagnostics(tmp_path):
    path = tmp_path / "metrics.csv"
    _write_metrics(path, [
        {"step": 40, "bp_corr/layer_1": 0.99},
        {"step": 45, "ortho/layer_2": 0.002},
        {"step": 49, "epoch": 0, "val/acc": 0.30, "train/acc_epoch": 0.25},
        {"step": 90, "bp_corr/layer_1": 0.98},
        {"step": 99, "epoch": 1, "val/acc": 0.33},  # interrupted here, resumed from epoch 1's start
        {"step": 99, "epoch": 1, "val/acc": 0.35},
    ])
    epochs = curves.read_epochs(path)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["test_acc"] == 0.35 and "val_acc" not in epochs[1]  # no test/acc column: val/acc is test
    assert epochs[0]["bp_corr/layer_1"] == 0.99 and epochs[1]["bp_corr/layer_1"] == 0.98
    assert epochs[1]["ortho/layer_2"] == 0.002  # the last value logged at or before the epoch's end


def test_a_held_out_run_reports_validation_and_test_apart(tmp_path):
    _write_run(tmp_path, "bp_s0", [0.30, 0.40], val_size=5000, test=[0.29, 0.38])
    _write_run(tmp_path, "gait_norm_s0", [0.28, 0.36], val_size=0)
    held, on_test = curves.runs(tmp_path)[0], curves.runs(tmp_path)[1]
    assert [(e["val_acc"], e["test_acc"]) for e in held.epochs()] == [(0.30, 0.29), (0.40, 0.38)]
    assert [e["test_acc"] for e in on_test.epochs()] == [0.28, 0.36]
    assert all("val_acc" not in e for e in on_test.epochs())  # validated on test: no validation accuracy


def test_aggregate_means_ranges_and_the_gap_seed_by_seed():
    rows = [
        {"run": "bp", "seed": 0, "epochs": 20, "final_test_acc": 0.48, "best_test_acc": 0.49, "final_val_acc": math.nan,
         "bp_corr_layer_1": 1.0},
        {"run": "bp", "seed": 1, "epochs": 20, "final_test_acc": 0.50, "best_test_acc": 0.50, "final_val_acc": math.nan,
         "bp_corr_layer_1": 1.0},
        {"run": "gait_norm", "seed": 0, "epochs": 20, "final_test_acc": 0.44, "best_test_acc": 0.45,
         "final_val_acc": 0.46, "bp_corr_layer_1": 0.999},
        {"run": "gait_norm", "seed": 1, "epochs": 20, "final_test_acc": 0.46, "best_test_acc": 0.46,
         "final_val_acc": 0.47, "bp_corr_layer_1": math.nan},
        {"run": "one_seed", "seed": 0, "epochs": 20, "final_test_acc": 0.40, "best_test_acc": 0.40,
         "final_val_acc": math.nan, "bp_corr_layer_1": 0.9},
    ]
    table = {r["run"]: r for r in headline.aggregate(rows, baseline="bp", order=["bp", "gait_norm"],
                                                    labels={"bp": "BP"})}
    assert table["bp"]["final_mean"] == pytest.approx(0.49) and table["bp"]["gap_to_baseline"] == 0.0
    assert math.isnan(table["bp"]["bp_corr_layer_1_mean"])  # backprop: r is 1 by definition, not reported
    gait = table["gait_norm"]
    assert (gait["final_min"], gait["final_max"]) == (0.44, 0.46) and gait["val_mean"] == pytest.approx(0.465)
    assert gait["gap_to_baseline"] == pytest.approx(0.04)
    assert math.isnan(gait["bp_corr_layer_1_mean"])  # a missing correlation is not averaged away
    assert table["one_seed"]["gap_to_baseline"] == pytest.approx(0.08)  # to BP's seed 0, not BP's mean
    text = headline.format_table(headline.aggregate(rows, baseline="bp", labels={"bp": "BP"}))
    assert "| 45.00 (44.00-46.00) |" in text and "+4.00" in text and "| BP | 0 1 |" in text


def test_headline_command_writes_the_table_and_the_experiment_files_figures(tmp_path, monkeypatch, capsys):
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "exp.yaml").write_text(
        "stacks:\n  - [bp]\n  - [gait_norm]\nseeds: [0, 1]\nlabels:\n  bp: plain BP\n"
        "figures:\n  curves:\n    runs: [bp, gait_norm]\n  full:\n    runs: [gait_norm]\n    all_epochs: true\n")
    monkeypatch.setattr(stacks, "GRIDS_DIR", grids)
    results = tmp_path / "results"
    for seed in (0, 1):
        _write_run(results / "exp", f"bp_s{seed}", [0.30, 0.40 + seed / 100, 0.42])
        _write_run(results / "exp", f"gait_norm_s{seed}", [0.28, 0.36, 0.40], corr=[0.99, 0.999, 0.998])
    assert headline.main(["exp", "--epoch", "2", "--write", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| plain BP | 0 1 | 2 2 | 40.50 (40.00-41.00) |" in out
    with open(results / "exp" / "summary_epoch2.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["gait_norm"]["gap_to_baseline"]) == pytest.approx(0.045)
    assert (results / "exp" / "curves_epoch2.png").stat().st_size > 0 and (results / "exp" / "full.png").is_file()
    assert headline.main(["exp", "--epoch", "4", "--results", str(results)]) == 1
    assert "not yet at epoch 4: bp_s0 (3 epochs)" in capsys.readouterr().out


def test_conv_comparison_reads_the_cnn_runs_at_one_epoch(tmp_path, capsys):
    folder = tmp_path / "cnn"
    corr = [0.99, 0.98, 0.97]
    _write_run(folder, "conv-bp+pixels_s0", [0.33, 0.41, 0.47], ortho_weight=0.0)
    _write_run(folder, "conv-gait_norm+pixels_s0", [0.31, 0.38, 0.44], corr=corr)
    rows = {r["quantity"]: r for r in conv_comparison.compare(3, folder=folder)}
    assert "cnn_bp_matched_test_acc" not in rows  # no such run in the folder
    assert rows["cnn_gait_n_test_acc"]["value"] == pytest.approx(44.0)
    assert rows["cnn_gap_bp_minus_gait_n"]["value"] == pytest.approx(3.0)
    assert rows["cnn_gap_bp_minus_gait_n"]["source"] == f"{folder / 'conv-bp+pixels_s0'};{folder / 'conv-gait_norm+pixels_s0'}"
    assert rows["cnn_gait_n_largest_ortho_dev"]["value"] == pytest.approx(0.03)

    _write_run(folder, "conv-bp+pixels+ortho_100_s0", [0.30, 0.37, 0.435], ortho_weight=100.0)
    rows = {r["quantity"]: r["value"] for r in conv_comparison.compare(3, folder=folder)}
    assert rows["cnn_gap_matched_bp_minus_gait_n"] == pytest.approx(-0.5)
    assert rows["cnn_mean_gap_epochs1_3_bp_minus_matched_bp"] == pytest.approx((3 + 4 + 3.5) / 3)
    assert rows["cnn_mean_gap_epochs1_3_matched_bp_minus_gait_n"] == pytest.approx((-1 - 1 - 0.5) / 3)
    # a GAIT-N run with another penalty weight joins once it has reached the epoch, its weight from its config
    _write_run(folder, "conv-gait_norm+pixels+ortho_10_s0", [0.32, 0.40], ortho_weight=10.0, corr=corr[:2])
    assert "cnn_gait_n_ortho10_test_acc" not in {r["quantity"] for r in conv_comparison.compare(3, folder=folder)}
    _write_run(folder, "conv-gait_norm+pixels+ortho_10_s0", [0.32, 0.40, 0.46], ortho_weight=10.0, corr=[0.9, 0.8, 0.95])
    rows = {r["quantity"]: r["value"] for r in conv_comparison.compare(3, folder=folder)}
    assert rows["cnn_gait_n_ortho10_test_acc"] == pytest.approx(46.0)
    assert rows["cnn_gap_bp_minus_gait_n_ortho10"] == pytest.approx(1.0)
    table = conv_comparison.penalty_table(folder, epochs=2)
    assert "| 100 | 3 | 31.00 | 38.00 | 0.9800 (0.9800) | 0.90 | 0.0200 |" in table
    assert "| 10 | 3 | 32.00 | 40.00 | 0.8000 (0.8000) |" in table

    # the standardized pair: its gain over the pixel runs, and the tables and figures of --write
    _write_run(folder, "conv-bp_s0", [0.40, 0.47, 0.52], ortho_weight=0.0)
    _write_run(folder, "conv-gait_norm_s0", [0.38, 0.45, 0.50], corr=corr)
    rows = {r["quantity"]: r["value"] for r in conv_comparison.compare(3, folder=folder, pair="standardized")}
    assert rows["cnn_gait_n_mean_gain_epochs1_3_over_pixels"] == pytest.approx((7 + 7 + 6) / 3)
    assert conv_comparison.main(["--epoch", "3", "--results", str(folder), "--write"]) == 0
    out = capsys.readouterr().out
    assert "| 3 | 52.00 | 50.00 | 2.00 | 0.9700 |" in out
    with open(folder / "pixels_epoch3.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert {"quantity", "epoch", "value", "source"} == set(written[0])
    assert (folder / "pixels_epoch3.png").stat().st_size > 0 and (folder / "standardized_epoch3.png").is_file()
    assert conv_comparison.main(["--epoch", "4", "--results", str(folder)]) == 1
    assert "conv-bp+pixels_s0 has no test accuracy at epoch 4 (it has 3 epochs)" in capsys.readouterr().err

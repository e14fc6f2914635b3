"""The headline experiment: its runs are the configs they claim to be, a run trains,
resumes and is summarised from the CSV it writes."""
from __future__ import annotations

import csv
import math

import pytest

from experiments import conv_comparison, headline
from experiments.common import regime_cli


def _settings(name):
    config, overrides, _ = headline.RUNS[name]
    rule = regime_cli(config, *overrides).model
    net = rule.net
    return rule, net


@pytest.mark.parametrize("name, expected", [
    ("bp", dict(rule="Backprop", square_output=False, ortho_weight=0.0)),
    ("bp_square", dict(rule="Backprop", square_output=True, ortho_weight=0.0)),
    ("bp_matched", dict(rule="Backprop", square_output=True, ortho_weight=100.0)),
    ("bp_matched_ortho10", dict(rule="Backprop", square_output=True, ortho_weight=10.0)),
    ("gait_norm", dict(rule="GAITProp", square_output=True, ortho_weight=100.0, target_mode="absolute")),
    ("gait_norm_diff32", dict(rule="GAITProp", square_output=True, ortho_weight=100.0, target_mode="difference")),
    ("gait_norm_ortho1000", dict(rule="GAITProp", square_output=True, ortho_weight=1000.0, target_mode="absolute")),
    ("gait_norm_ortho10", dict(rule="GAITProp", square_output=True, ortho_weight=10.0, target_mode="absolute")),
    ("fa_lr1e-4", dict(rule="FeedbackAlignment", lr=1e-4)),
    ("conv_gait_norm_diff32_lr1e-3", dict(rule="GAITProp", square_output=True, ortho_weight=100.0,
                                          target_mode="difference", lr=1e-3)),
    ("conv_bp32_lr1e-3", dict(rule="Backprop", square_output=True, ortho_weight=0.0, lr=1e-3)),
    ("conv_bp32_ortho100_lr1e-3", dict(rule="Backprop", square_output=True, ortho_weight=100.0, lr=1e-3)),
    ("conv_gait_norm_diff32_ortho10_lr1e-3", dict(rule="GAITProp", square_output=True, ortho_weight=10.0,
                                                  target_mode="difference", lr=1e-3)),
    ("conv_gait_norm_diff32_ortho1_lr1e-3", dict(rule="GAITProp", square_output=True, ortho_weight=1.0,
                                                 target_mode="difference", lr=1e-3)),
])
def test_runs_are_what_their_names_say(name, expected):
    rule, net = _settings(name)
    assert type(rule).__name__ == expected.pop("rule")
    for key, value in expected.items():
        owner = net if key == "square_output" else rule
        assert getattr(owner, key) == value, (name, key)


@pytest.mark.parametrize("name", list(conv_comparison.CONV_GAIT_PENALTIES))
def test_conv_penalty_runs_differ_from_the_compared_gait_run_only_in_the_penalty(name):
    rule, _ = _settings(name)
    reference, _ = _settings(conv_comparison.CONV_GAIT)
    assert rule.ortho_weight == conv_comparison.CONV_GAIT_PENALTIES[name]
    for key in ("lr", "target_mode", "normalize", "eta"):
        assert getattr(rule, key) == getattr(reference, key), (name, key)
    config, overrides, _ = headline.RUNS[name]
    assert config == headline.RUNS[conv_comparison.CONV_GAIT][0]
    assert overrides[overrides.index("--trainer.precision") + 1] == "32-true"


@pytest.mark.parametrize("name, reference", [("conv_bp32_norm_lr1e-3", "conv_bp32_lr1e-3"),
                                             ("conv_gait_norm_diff32_norm_lr1e-3", "conv_gait_norm_diff32_lr1e-3")])
def test_standardized_conv_runs_differ_from_the_lr_1e3_pair_only_in_the_inputs(name, reference):
    config, overrides, _ = headline.RUNS[name]
    ref_config, ref_overrides, _ = headline.RUNS[reference]
    flag = overrides.index("--data.normalize_channels")
    assert config == ref_config and overrides[:flag] + overrides[flag + 2:] == ref_overrides
    assert regime_cli(config, *overrides).datamodule.normalize_channels


def test_matched_baseline_trains_the_gait_network():
    """BP's matched baseline has exactly GAIT-N's parameter shapes (same network, other rule)."""
    _, gait = _settings("gait_norm")
    _, matched = _settings("bp_matched")
    _, plain = _settings("bp")
    shapes = lambda net: [tuple(p.shape) for p in net.parameters()]  # noqa: E731
    assert shapes(matched) == shapes(gait) and shapes(plain) != shapes(gait)


def test_float32_run_asks_for_float32():
    _, overrides, _ = headline.RUNS["gait_norm_diff32"]
    assert overrides[overrides.index("--trainer.precision") + 1] == "32-true"


def _write_metrics(path, rows):
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_read_epochs_counts_a_resumed_epoch_once_and_pairs_the_correlation(tmp_path):
    path = tmp_path / "gait_norm_s0.csv"
    _write_metrics(path, [
        {"step": 40, "bp_corr/layer_1": 0.99},
        {"step": 49, "epoch": 0, "val/acc": 0.30, "train/acc_epoch": 0.25},
        {"step": 90, "bp_corr/layer_1": 0.98},
        {"step": 99, "epoch": 1, "val/acc": 0.33},  # interrupted here, resumed from epoch 1's start
        {"step": 99, "epoch": 1, "val/acc": 0.35},
    ])
    epochs = headline.read_epochs(path)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[1]["test_acc"] == 0.35
    assert epochs[0]["bp_corr/layer_1"] == 0.99 and epochs[1]["bp_corr/layer_1"] == 0.98


def test_aggregate_means_ranges_and_gap():
    rows = [
        {"run": "bp", "seed": 0, "epochs": 20, "final_test_acc": 0.48, "best_test_acc": 0.49, "bp_corr_layer_1": 1.0},
        {"run": "bp", "seed": 1, "epochs": 20, "final_test_acc": 0.50, "best_test_acc": 0.50, "bp_corr_layer_1": 1.0},
        {"run": "gait_norm", "seed": 0, "epochs": 20, "final_test_acc": 0.44, "best_test_acc": 0.45,
         "bp_corr_layer_1": 0.999},
        {"run": "gait_norm", "seed": 1, "epochs": 20, "final_test_acc": 0.46, "best_test_acc": 0.46,
         "bp_corr_layer_1": math.nan},
    ]
    table = {r["run"]: r for r in headline.aggregate(rows)}
    assert table["bp"]["final_mean"] == pytest.approx(0.49) and table["bp"]["gap_to_bp"] == 0.0
    gait = table["gait_norm"]
    assert (gait["final_min"], gait["final_max"]) == (0.44, 0.46)
    assert gait["gap_to_bp"] == pytest.approx(0.04)
    assert math.isnan(gait["bp_corr_layer_1_mean"])  # a missing correlation is not averaged away
    text = headline.format_table(headline.aggregate(rows))
    assert "| 45.00 (44.00-46.00) |" in text and "+4.00" in text


def test_run_resume_sync_and_report(tiny_cifar_root, tmp_path, capsys):
    """A run trains through fit, is resumed to a longer budget from its last.ckpt, and the
    report writes the summary CSV and figures from the synced CSV."""
    outputs, results = tmp_path / "outputs", tmp_path / "results"
    common = ["--seeds", "0", "--data-dir", str(tiny_cifar_root), "--outputs", str(outputs),
              "--results", str(results), "--fit-args", "--data.verify_checksums", "false",
              "--model.init_args.net.init_args.width", "16",
              "--model.init_args.net.init_args.depth", "2"]
    assert headline.main(["run", "bp", "--epochs", "1", *common]) == 0
    assert headline.last_checkpoint(outputs, "bp_s0") == outputs / "bp_s0" / "part1" / "checkpoints" / "last.ckpt"
    assert [e["epoch"] for e in headline.read_epochs(results / "bp_s0.csv")] == [1]
    assert headline.main(["run", "bp", "--epochs", "2", *common]) == 0
    assert "--ckpt_path" in capsys.readouterr().out  # the second run resumed the first
    assert headline.last_checkpoint(outputs, "bp_s0").parent.parent.name == "part2"
    assert [e["epoch"] for e in headline.read_epochs(results / "bp_s0.csv")] == [1, 2]

    assert headline.main(["report", "--epoch", "2", "--write", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| BP (500 -> 10 output, no penalty) | 0 | 2 |" in out
    with open(results / "summary_epoch2.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["run"] == "bp" and 0.0 <= float(row["final_mean"]) <= 1.0
    assert (results / "curves_epoch2.png").stat().st_size > 0
    assert (results / "full_length.png").stat().st_size > 0

    assert headline.main(["report", "--epoch", "3", "--results", str(results)]) == 1
    assert "not yet at epoch 3: bp_s0 (2 epochs)" in capsys.readouterr().out


def _write_mlp(path, accuracies):
    """An experiments.training CSV: evaluated every half epoch."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["regime", "epoch", "test_acc"])
        for k, acc in enumerate(accuracies):
            writer.writerow(["x", (k + 1) / 2, acc])


def test_conv_comparison_reads_both_formats_at_one_epoch(tmp_path, capsys):
    results, mlp = tmp_path / "results", tmp_path / "mlp"
    results.mkdir()
    mlp.mkdir()
    for name, accs in (("conv_bp32_lr1e-3_s0", [0.33, 0.41, 0.47]), ("conv_gait_norm_diff32_lr1e-3_s0", [0.31, 0.38, 0.44])):
        _write_metrics(results / f"{name}.csv", [
            row for k, acc in enumerate(accs)
            for row in ({"step": 10 * k + 5, "bp_corr/layer_1": 0.99 - k / 100, "bp_corr/layer_2": 0.999},
                        {"step": 10 * k + 9, "epoch": k, "val/acc": acc})
        ])
    _write_mlp(mlp / "bp.csv", [0.29, 0.32, 0.33, 0.34, 0.355, 0.36])  # epochs 0.5 .. 3
    _write_mlp(mlp / "gait_norm.csv", [0.27, 0.30, 0.31, 0.32, 0.33, 0.335])
    rows = {r["quantity"]: r["value_pp"] for r in conv_comparison.compare(3, results=results, mlp=mlp)}
    assert "cnn_bp_matched_test_acc" not in rows  # no such run in the folder
    assert rows["cnn_gait_n_test_acc"] == pytest.approx(44.0) and rows["mlp_bp_test_acc"] == pytest.approx(36.0)
    assert rows["cnn_gait_n_minus_mlp_bp"] == pytest.approx(8.0)
    assert rows["cnn_gap_bp_minus_gait_n"] == pytest.approx(3.0)
    assert rows["mlp_gap_bp_minus_gait_n"] == pytest.approx(2.5)

    _write_metrics(results / "conv_bp32_ortho100_lr1e-3_s0.csv", [
        {"step": 10 * k + 9, "epoch": k, "val/acc": acc} for k, acc in enumerate([0.30, 0.37, 0.435])])
    rows = {r["quantity"]: r["value_pp"] for r in conv_comparison.compare(3, results=results, mlp=mlp)}
    assert rows["cnn_gap_matched_bp_minus_gait_n"] == pytest.approx(-0.5)
    rows = {r["quantity"]: r["value_pp"] for r in conv_comparison.compare(2, results=results, mlp=mlp)}
    assert rows["cnn_gap_matched_bp_minus_gait_n"] == pytest.approx(-1.0)
    _write_metrics(results / "conv_bp32_ortho100_lr1e-3_s0.csv", [{"step": 9, "epoch": 0, "val/acc": 0.30}])
    rows = {r["quantity"]: r["value_pp"] for r in conv_comparison.compare(3, results=results, mlp=mlp)}
    assert "cnn_bp_matched_test_acc" not in rows  # a matched run short of the epoch is left out
    _write_metrics(results / "conv_bp32_ortho100_lr1e-3_s0.csv", [
        {"step": 10 * k + 9, "epoch": k, "val/acc": acc} for k, acc in enumerate([0.30, 0.37, 0.435])])

    # a GAIT-N run with another penalty weight joins once it has reached the epoch
    _write_metrics(results / "conv_gait_norm_diff32_ortho10_lr1e-3_s0.csv", [
        row for k, acc in enumerate([0.32, 0.40, 0.46])
        for row in ({"step": 10 * k + 5, "bp_corr/layer_1": 0.95, "bp_corr/layer_2": 0.99},
                    {"step": 10 * k + 9, "epoch": k, "val/acc": acc})])
    rows = {r["quantity"]: r["value_pp"] for r in conv_comparison.compare(3, results=results, mlp=mlp)}
    assert rows["cnn_gait_n_ortho10_test_acc"] == pytest.approx(46.0)
    assert rows["cnn_gait_n_ortho10_minus_mlp_bp"] == pytest.approx(10.0)
    assert rows["cnn_gap_bp_minus_gait_n_ortho10"] == pytest.approx(1.0)
    assert "cnn_gait_n_ortho1_test_acc" not in rows and "cnn_gait_n_ortho100_test_acc" not in rows
    rows = {r["quantity"]: r["value_pp"]
            for r in conv_comparison.compare(3, results=results, mlp=mlp, conv_gait="conv_gait_norm_diff32_ortho10_lr1e-3")}
    assert rows["cnn_gait_n_test_acc"] == pytest.approx(46.0)  # the compared run is not listed twice
    assert rows["cnn_gait_n_ortho100_test_acc"] == pytest.approx(44.0)
    assert "cnn_gait_n_ortho10_test_acc" not in rows
    assert rows["cnn_gap_matched_bp_minus_gait_n"] == pytest.approx(-0.5)  # against GAIT-N of the same weight
    # a GAIT-N run outside the penalty runs (other inputs, say): every penalty run is listed beside it
    for name in ("conv_bp32_norm_lr1e-3", "conv_gait_norm_diff32_norm_lr1e-3"):
        _write_metrics(results / f"{name}_s0.csv", [
            {"step": 10 * k + 9, "epoch": k, "val/acc": acc} for k, acc in enumerate([0.40, 0.47, 0.52])])
    rows = {r["quantity"]: r["value_pp"]
            for r in conv_comparison.compare(3, results=results, mlp=mlp, conv_bp="conv_bp32_norm_lr1e-3",
                                             conv_gait="conv_gait_norm_diff32_norm_lr1e-3")}
    assert rows["cnn_gait_n_test_acc"] == pytest.approx(52.0) and rows["cnn_gap_bp_minus_gait_n"] == pytest.approx(0.0)
    assert rows["cnn_gait_n_ortho100_test_acc"] == pytest.approx(44.0)
    assert rows["cnn_gap_matched_bp_minus_gait_n"] == pytest.approx(-0.5)
    for name in ("conv_bp32_norm_lr1e-3", "conv_gait_norm_diff32_norm_lr1e-3"):
        (results / f"{name}_s0.csv").unlink()

    # a run that has not finished its first epoch is left out of the table and the figure
    _write_metrics(results / "conv_gait_norm_diff32_ortho1_lr1e-3_s0.csv", [{"step": 5, "bp_corr/layer_1": 0.9}])
    assert conv_comparison.main(["--epoch", "3", "--results", str(results), "--mlp", str(mlp), "--write"]) == 0
    with open(results / "conv_epoch3.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    assert (results / "conv_epoch3.png").stat().st_size > 0
    assert conv_comparison.main(["--epoch", "3", "--results", str(results), "--mlp", str(mlp), "--write",
                                 "--gait", "conv_gait_norm_diff32_ortho10_lr1e-3", "--stem", "other_pair"]) == 0
    with open(results / "other_pair.csv", newline="") as f:
        assert {r["quantity"]: float(r["value_pp"]) for r in csv.DictReader(f)}["cnn_gait_n_test_acc"] == pytest.approx(46.0)
    assert (results / "other_pair.png").stat().st_size > 0

    capsys.readouterr()
    assert conv_comparison.main(["--epoch", "4", "--results", str(results), "--mlp", str(mlp)]) == 1
    assert "conv_bp32_lr1e-3_s0.csv has no test accuracy at epoch 4 (it has 3 epochs)" in capsys.readouterr().err

"""The fair CNN-against-MLP table: each network and rule at the learning rate its validation accuracy
chooses, reported on test accuracy over the seeds; trained through the committed grid on tiny data."""
from __future__ import annotations

import csv

import pytest
import yaml

from experiments import fair_table, stacks

NET = {"MLP": "lightning_gait.InvertibleMLP", "CNN": "lightning_gait.InvertibleCNN"}
RULE = {"BP": "lightning_gait.Backprop", "GAIT-N": "lightning_gait.GAITProp"}


def _run(folder, name, seed, *, network, rule, lr, val, test, val_size=5000):
    """A run folder as experiments.stacks syncs it: val/acc and test/acc per epoch, and its config."""
    run = folder / f"{name}_s{seed}"
    run.mkdir(parents=True)
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "val/acc", "test/acc"])
        for k, (v, t) in enumerate(zip(val, test)):
            writer.writerow([k, 10 * k + 9, v, t])
    config = {"model": {"class_path": RULE[rule], "init_args": {"lr": lr, "net": {"class_path": NET[network]}}},
              "data": {"init_args": {"val_size": val_size}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_rate_with_a_collapsed_run_is_left_out_and_does_not_set_the_epoch(tmp_path, capsys):
    folder = tmp_path / "fair"
    for seed in (0, 1):
        _run(folder, "gait+lr_3e-4", seed, network="MLP", rule="GAIT-N", lr=3e-4, val=[0.30, 0.40, 0.42],
             test=[0.3, 0.4, 0.41])
        # the larger rate is better at first, then seed 1 collapses to chance and stops after epoch 2
        val = [0.35, 0.45, 0.46] if seed == 0 else [0.35, 0.10]
        _run(folder, "gait+lr_1e-3", seed, network="MLP", rule="GAIT-N", lr=1e-3, val=val, test=val)
    epoch, groups = fair_table.collect(folder)
    assert epoch == 3  # the collapsed run's 2 epochs do not cut the table short
    table, rates = fair_table.choose(groups)
    assert [(r["lr"], r["collapsed"], r["chosen"]) for r in rates] == [(3e-4, False, True), (1e-3, True, False)]
    assert rates[1]["val_acc_mean"] is None  # no mean of a rate that has no model left
    assert table[0]["lr"] == 3e-4 and table[0]["test_acc_mean"] == pytest.approx(0.41)
    assert fair_table.main(["fair", "--results", str(tmp_path)]) == 0
    assert "collapsed (left out)" in capsys.readouterr().out
    # every rate collapsed: one line, no table
    for seed in (0, 1):
        (folder / f"gait+lr_3e-4_s{seed}" / "metrics.csv").write_text("epoch,step,val/acc,test/acc\n0,9,0.1,0.1\n")
    assert fair_table.main(["fair", "--results", str(tmp_path)]) == 1
    assert "every learning rate has a collapsed run" in capsys.readouterr().err


def test_the_rate_is_chosen_on_validation_and_reported_on_test(tmp_path, capsys):
    folder = tmp_path / "fair"
    for seed in (0, 1):
        # MLP BP: 1e-3 is best on validation, though 3e-4 is better on test: the table must not look at test
        _run(folder, "bp+lr_3e-4", seed, network="MLP", rule="BP", lr=3e-4, val=[0.30, 0.40], test=[0.31, 0.50])
        _run(folder, "bp+lr_1e-3", seed, network="MLP", rule="BP", lr=1e-3, val=[0.35, 0.45], test=[0.33, 0.44 + seed / 100])
        _run(folder, "bp+lr_3e-3", seed, network="MLP", rule="BP", lr=3e-3, val=[0.20, 0.30], test=[0.20, 0.30])
        # CNN GAIT-N: the largest rate wins: at the edge of the grid
        _run(folder, "conv-gait_norm+lr_3e-4", seed, network="CNN", rule="GAIT-N", lr=3e-4, val=[0.3, 0.4], test=[0.3, 0.4])
        _run(folder, "conv-gait_norm+lr_1e-3", seed, network="CNN", rule="GAIT-N", lr=1e-3, val=[0.3, 0.5], test=[0.3, 0.5])
    epoch, groups = fair_table.collect(folder)
    assert epoch == 2 and set(groups) == {("MLP", "BP"), ("CNN", "GAIT-N")}
    table, rates = fair_table.choose(groups)
    rows = {(r["network"], r["rule"]): r for r in table}
    mlp = rows[("MLP", "BP")]
    assert mlp["lr"] == 1e-3 and not mlp["edge"] and mlp["seeds"] == "0 1"
    assert mlp["test_acc_mean"] == pytest.approx(0.445) and (mlp["test_acc_min"], mlp["test_acc_max"]) == (0.44, 0.45)
    assert rows[("CNN", "GAIT-N")]["lr"] == 1e-3 and rows[("CNN", "GAIT-N")]["edge"]
    assert [r["chosen"] for r in rates if r["network"] == "MLP"] == [False, True, False]
    # at epoch 1 the choice is made again on epoch 1's validation accuracy
    table, _ = fair_table.choose(fair_table.collect(folder, epoch=1)[1])
    assert {(r["network"], r["lr"]) for r in table} == {("MLP", 1e-3), ("CNN", 3e-4)}  # a tie goes to the smaller rate

    assert fair_table.main(["fair", "--results", str(tmp_path), "--write"]) == 0
    out = capsys.readouterr().out
    assert "| MLP | BP | 0.001 | 0 1 | 2 | 45.00 | 44.50 (44.00-45.00) |" in out
    assert "| CNN | GAIT-N | 0.001 (edge of the grid) |" in out
    with open(folder / "table_epoch2.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert all(len(r["source"].split(";")) == 2 for r in written)  # the chosen runs' folders, for the trace
    assert (folder / "lr_epoch2.csv").is_file()


def test_a_run_validated_on_test_or_missing_a_seed_stops_the_table(tmp_path, capsys):
    folder = tmp_path / "fair"
    _run(folder, "bp+lr_3e-4", 0, network="MLP", rule="BP", lr=3e-4, val=[0.3], test=[0.3])
    _run(folder, "bp+lr_1e-3", 0, network="MLP", rule="BP", lr=1e-3, val=[0.3], test=[0.3])
    _run(folder, "bp+lr_1e-3", 1, network="MLP", rule="BP", lr=1e-3, val=[0.3], test=[0.3])
    assert fair_table.main(["fair", "--results", str(tmp_path)]) == 1
    assert "different seeds" in capsys.readouterr().err
    assert fair_table.main(["fair", "--results", str(tmp_path), "--epoch", "2"]) == 1
    assert "has not reached epoch 2" in capsys.readouterr().err
    _run(folder, "bp+lr_3e-3", 0, network="MLP", rule="BP", lr=3e-3, val=[0.3], test=[0.3], val_size=0)
    assert fair_table.main(["fair", "--results", str(tmp_path)]) == 1
    assert "validated on the test set" in capsys.readouterr().err


@pytest.mark.e2e  # four runs of an experiment
def test_the_committed_grid_trains_on_tiny_data_and_makes_its_table(tiny_cifar_root, tmp_path, capsys):
    """Two of fair_cnn_mlp's stacks (the MLP's BP at two rates), two seeds, one epoch of tiny data, through
    experiments.stacks, then the table from what sync wrote."""
    names = {stacks.run_name(r.stack) for r in stacks.load_grid("fair_cnn_mlp")}
    mlp_bp = sorted(n for n in names if n.startswith("bp+"))[:2]
    results = tmp_path / "results"
    assert stacks.main(["run", "fair_cnn_mlp", "--only", *mlp_bp, "--seeds", "0", "1",
                        "--data-dir", str(tiny_cifar_root), "--outputs", str(tmp_path / "outputs"),
                        "--results", str(results), "--fit-args", "--trainer.max_epochs", "1",
                        "--model.init_args.net.init_args.width", "16", "--model.init_args.net.init_args.depth", "2",
                        "--data.val_size", "64", "--data.verify_checksums", "false"]) == 0
    capsys.readouterr()
    assert fair_table.main(["fair_cnn_mlp", "--results", str(results), "--write"]) == 0
    out = capsys.readouterr().out
    (row,) = list(csv.DictReader(open(results / "fair_cnn_mlp" / "table_epoch1.csv", newline="")))
    assert (row["network"], row["rule"], row["seeds"], row["epoch"]) == ("MLP", "BP", "0 1", "1")
    assert float(row["lr"]) in (3e-4, 1e-3, 3e-3) and row["edge"] == "True"  # two rates: the choice is an edge
    assert 0.0 <= float(row["test_acc_min"]) <= float(row["test_acc_mean"]) <= float(row["test_acc_max"]) <= 1.0
    assert "<- chosen" in out

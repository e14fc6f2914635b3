"""experiments.levers: each run at the epoch its validation accuracy chooses, with its smallest BP correlation."""
import csv
import math

import pytest
import yaml

from experiments import levers

FIELDS = ["epoch", "step", "val/acc", "test/acc", "bp_corr/layer_1", "bp_corr/layer_2"]


def _run(root, name, seed, epochs, corr_rows=(), val_size=5000, max_epochs=None):
    """A run folder: per epoch (val, test); corr_rows: (step, layer 1, layer 2) logged by step; the
    config plans ``max_epochs`` (default: the epochs given, a finished run)."""
    folder = root / "exp" / f"{name}_s{seed}"
    folder.mkdir(parents=True)
    config = {"data": {"init_args": {"val_size": val_size}}, "trainer": {"max_epochs": max_epochs or len(epochs)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for step, c1, c2 in corr_rows:
            writer.writerow({"step": step, "bp_corr/layer_1": c1, "bp_corr/layer_2": c2})
        for i, (val, test) in enumerate(epochs):
            writer.writerow({"epoch": i, "step": 10 * (i + 1) - 1, "val/acc": val, "test/acc": test})
    return folder


def test_the_epoch_is_chosen_on_validation_and_test_is_read_there(tmp_path, capsys):
    _run(tmp_path, "gait", 0, [(0.40, 0.41), (0.55, 0.50), (0.52, 0.60)], [(0, 0.99999, 0.99998), (9, 0.99997, 0.99999)])
    _run(tmp_path, "gait", 1, [(0.45, 0.44), (0.50, 0.52)], [(0, 0.99996, 0.99999)])
    assert levers.main(["exp", "--results", str(tmp_path), "--write"]) == 0
    assert (tmp_path / "exp" / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "exp" / "correlation.png").stat().st_size > 10_000
    with open(tmp_path / "exp" / "table.csv") as f:
        seeds = list(csv.DictReader(f))
    assert [(r["seed"], r["chosen_epoch"], r["test_acc"]) for r in seeds] == [("0", "2", "0.5"), ("1", "2", "0.52")]
    assert float(seeds[0]["min_bp_corr_layer_1"]) == 0.99997 and float(seeds[0]["min_bp_corr_layer_2"]) == 0.99998
    (row,) = levers.table_rows([levers.seed_row(r) for r in levers.runs(tmp_path / "exp")])
    assert row["epochs"] == 2 and row["chosen"] == [2, 2]
    assert row["test_acc"] == pytest.approx(0.51) and (row["test_min"], row["test_max"]) == (0.50, 0.52)
    assert (row["min_bp_corr"], row["min_bp_corr_layer"]) == (0.99996, 1)
    assert "| gait | 0, 1 | 2 | 2, 2 | 52.50 | 51.00 (50.00-52.00) | 0.999960 (1) |" in capsys.readouterr().out


def test_correlation_curves_keep_every_logged_step(tmp_path):
    folder = _run(tmp_path, "gait", 0, [(0.40, 0.41)], [(0, 0.5, "nan"), (5, 0.9, 0.99)])
    curves = levers.correlation_curves(folder / "metrics.csv")
    assert curves[1] == [(0, 0.5), (5, 0.9)]
    assert curves[2][0][0] == 0 and math.isnan(curves[2][0][1]) and curves[2][1] == (5, 0.99)


def test_a_nan_correlation_stays_nan(tmp_path):
    _run(tmp_path, "gait", 0, [(0.40, 0.41)], [(0, 0.5, "nan"), (5, 0.9, 0.99)])
    (row,) = levers.table_rows([levers.seed_row(r) for r in levers.runs(tmp_path / "exp")])
    assert math.isnan(row["min_bp_corr"]) and row["min_bp_corr_layer"] == 2


def test_a_run_validated_on_test_is_refused(tmp_path, capsys):
    _run(tmp_path, "bp", 0, [(0.40, 0.41)], val_size=0)
    assert levers.main(["exp", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "validated on the test set" in err and "\n" not in err


def test_no_runs_is_one_line(tmp_path, capsys):
    assert levers.main(["missing", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no runs in")


def test_nan_accuracies_are_never_numbers(tmp_path):
    _run(tmp_path, "gait", 0, [(0.40, 0.41), (0.55, 0.50)])
    _run(tmp_path, "gait", 1, [(0.45, 0.44), ("nan", "nan")])
    rows = [levers.seed_row(r) for r in levers.runs(tmp_path / "exp")]
    assert math.isnan(rows[1]["val_acc"]) and math.isnan(rows[1]["test_acc"])
    (row,) = levers.table_rows(rows)
    assert all(math.isnan(row[k]) for k in ("val_acc", "test_acc", "test_min", "test_max"))
    assert row["min_bp_corr"] is None  # nothing logged
    assert "| gait | 0, 1 | 2 | 2, - | nan | nan (nan-nan) | - |" in levers.format_table([row])


def test_a_run_without_its_config_is_one_line(tmp_path, capsys):
    (_run(tmp_path, "gait", 0, [(0.40, 0.41)]) / "config.yaml").unlink()
    assert levers.main(["exp", "--results", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_the_ablation_pairs_seeds_and_waits_for_missing_runs(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "full", 0, [(0.60, 0.62)])
    _run(tmp_path, "full", 1, [(0.61, 0.64)])
    _run(tmp_path, "no_aug", 1, [(0.55, 0.58), (0.57, 0.57)])  # seed 1 only: the pair is seed 1
    _run(tmp_path, "no_aug", 2, [(0.10, 0.10)])  # no partner seed: left out
    _run(tmp_path, "full", 3, [(0.61, 0.64)])
    _run(tmp_path, "no_aug", 3, [(0.61, 0.90)], max_epochs=2)  # not finished: seed 3 is no pair yet
    spec = {"stacks": [["full"], ["no_aug"], ["pixels"]],
            "ablation": {"augmentation": ["full", "no_aug"], "standardization": ["full", "pixels"]}}
    monkeypatch.setattr(levers, "grid_spec", lambda name: spec)
    assert levers.main(["exp", "--results", str(tmp_path), "--write"]) == 0
    out = capsys.readouterr().out
    assert "| augmentation | full | no_aug | 1 | 64.00 | 57.00 | +7.00 | +4.00 |" in out  # val: 61 against 57
    assert "| standardization | full | pixels | no seed finished by both yet | | | | |" in out
    with open(tmp_path / "exp" / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["lever"], r["seeds"]) for r in rows] == [("augmentation", "1"), ("standardization", "")]
    assert float(rows[0]["difference"]) == pytest.approx(0.07) and rows[1]["difference"] == "nan"
    assert float(rows[0]["val_difference"]) == pytest.approx(0.04) and rows[1]["val_difference"] == "nan"
    assert float(rows[0]["differences"]) == pytest.approx(0.07)  # seed 1 only
    assert (tmp_path / "exp" / "ablation.png").stat().st_size > 5_000


def test_an_ablation_naming_no_run_of_the_grid_is_one_line(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "full", 0, [(0.60, 0.62)])
    monkeypatch.setattr(levers, "grid_spec", lambda name: {"stacks": [["full"]], "ablation": {"aug": ["full", "ful_noaug"]}})
    assert levers.main(["exp", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: ablation lever 'aug': 'ful_noaug' is not a run of the grid"


def test_a_nan_test_accuracy_makes_the_difference_nan(tmp_path):
    _run(tmp_path, "full", 0, [(0.60, 0.62)])
    _run(tmp_path, "bare", 0, [("nan", "nan")])
    rows = [levers.seed_row(r) for r in levers.runs(tmp_path / "exp")]
    (row,) = levers.ablation_rows(rows, {"lever": ["full", "bare"]})
    assert row["seeds"] == [0] and row["test_with"] == pytest.approx(0.62) and math.isnan(row["difference"])
    assert levers.format_ablation([row]).splitlines()[-1] == "| lever | full | bare | 0 | 62.00 | nan | nan | nan |"


def test_a_run_without_a_finished_epoch_is_left_out_with_a_note(tmp_path, capsys):
    _run(tmp_path, "gait", 0, [(0.40, 0.41)])
    _run(tmp_path, "gait", 1, [], max_epochs=30)
    assert levers.main(["exp", "--results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| gait | 0 | 1 |" in captured.out
    assert captured.err.strip() == f"note: {tmp_path / 'exp' / 'gait_s1'}: no finished epoch with a validation accuracy yet: left out"


def test_an_unfinished_seed_gets_a_row_of_its_own(tmp_path, capsys):
    _run(tmp_path, "gait", 0, [(0.30, 0.31)], max_epochs=2)
    _run(tmp_path, "gait", 1, [(0.40, 0.41), (0.50, 0.52)])
    rows = levers.table_rows([levers.seed_row(r) for r in levers.runs(tmp_path / "exp")])
    assert [(r["seeds"], r["finished"], r["test_acc"]) for r in rows] == [([1], True, 0.52), ([0], False, 0.31)]
    assert levers.format_table(rows).splitlines()[-1].startswith("| gait (unfinished) | 0 | 1 | 1 |")


def test_unfinished_seeds_are_never_averaged_together(tmp_path):
    _run(tmp_path, "gait", 0, [(0.30, 0.31), (0.40, 0.42)], max_epochs=5)
    _run(tmp_path, "gait", 1, [(0.35, 0.36)], max_epochs=5)
    rows = levers.table_rows([levers.seed_row(r) for r in levers.runs(tmp_path / "exp")])
    assert [(r["seeds"], r["finished"], r["epochs"], r["test_acc"]) for r in rows] == [
        ([0], False, 2, 0.42), ([1], False, 1, 0.36)]


def test_an_ablation_that_is_not_a_mapping_is_one_line(tmp_path, monkeypatch, capsys):
    _run(tmp_path, "full", 0, [(0.60, 0.62)])
    monkeypatch.setattr(levers, "grid_spec", lambda name: {"stacks": [["full"]], "ablation": [["full", "full"]]})
    assert levers.main(["exp", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ablation: expected a mapping") and "\n" not in err


def _captured(monkeypatch):
    """Keep the figure ``save_figure`` is given (and close nothing) instead of writing it."""
    figures = []
    monkeypatch.setattr(levers, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def test_each_run_gets_a_panel_of_its_own_with_every_seed(tmp_path, monkeypatch):
    for k in range(12):
        _run(tmp_path, f"run{k:02d}", 0, [(0.40, 0.41), (0.50, 0.52)])
    _run(tmp_path, "run03", 1, [(0.42, 0.43), (0.51, 0.53)])
    figures = _captured(monkeypatch)
    levers.plot(levers.runs(tmp_path / "exp"), tmp_path / "curves.png", {"run03": "the third"})
    (fig,) = figures
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 12 and len(fig.axes) == 12  # 3 rows of 4
    third = next(ax for ax in shown if ax.get_title() == "the third")
    assert len(third.lines) == 4  # test and validation of seeds 0 and 1
    assert [t.get_text() for t in third.get_legend().get_texts()] == ["seed 0", "seed 1"]
    assert {ax.get_title() for ax in shown} - {"the third"} == {f"run{k:02d}" for k in range(12) if k != 3}


def test_the_correlation_figure_draws_each_rule_but_backprop_at_its_lowest_seed(tmp_path, monkeypatch):
    corr = [(0, 0.99999, 0.9999), (9, 0.999, 1.0)]
    _run(tmp_path, "conv-gait_norm", 1, [(0.40, 0.41)], corr)
    _run(tmp_path, "conv-gait_norm", 2, [(0.40, 0.41)], corr)
    _run(tmp_path, "conv-bp", 0, [(0.40, 0.41)], corr)
    figures = _captured(monkeypatch)
    assert levers.plot_correlation(levers.runs(tmp_path / "exp"), tmp_path / "c.png") == tmp_path / "c.png"
    (fig,) = figures
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_title() == "conv-gait_norm, seed 1" and ax.get_yscale() == "log"
    layer1, layer2 = ax.lines
    assert list(layer1.get_xdata()) == [0, 9]
    assert list(layer2.get_xdata()) == [0]  # a correlation of 1 has no place on a log axis


def test_no_correlation_figure_without_a_rule_that_logs_one(tmp_path):
    _run(tmp_path, "conv-bp", 0, [(0.40, 0.41)], [(0, 1.0, 1.0)])
    _run(tmp_path, "conv-gait_norm", 0, [(0.40, 0.41)])
    assert levers.plot_correlation(levers.runs(tmp_path / "exp"), tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()

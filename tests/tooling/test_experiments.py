"""The experiment commands (Fig. 2B, the orthogonality drift, Fig. 2A) on small networks and the tiny dataset."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from experiments import correlation, orthogonality, training
from experiments.common import build_regime, model_args, net_args, regime_cli, resolved_config
from lightning_gait import InvertibleMLP
from lightning_gait.diagnostics import backprop_gradients, gradient_alignment, orthogonality_deviation


@pytest.fixture(scope="module")
def small_rows():
    """Every variant, dtype and form on one 3072 -> 6 x 32 network and a batch of 16 random images."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 3072), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    return correlation.measure_network(0, (images, labels), width=32, depth=6), (images, labels)


def _corr(rows, variant, dtype, form, layer):
    (row,) = [r for r in rows if (r["variant"], r["dtype"], r["form"], r["layer"]) == (variant, dtype, form, layer)]
    return row["corr"]


def test_fig2b_variants_behave_as_the_paper_says(small_rows):
    rows, _ = small_rows
    layers = range(1, 8)
    # normalized targets, float64, the paper's form: backprop's update at every layer
    for variant in ("GAIT-N", "GAIT-SN"):
        assert all(_corr(rows, variant, "float64", "paper", k) > 0.9999 for k in layers)
    # fixed gamma 1e-3, paper form: the difference near the input (~gamma^6) is lost to round-off ...
    assert abs(_corr(rows, "GAIT", "float64", "paper", 1)) < 0.5
    # ... and the difference form, the same algorithm without forming t = a + tiny, recovers it
    assert all(_corr(rows, "GAIT", "float64", "difference", k) > 0.9999 for k in layers)
    # float32 needs the difference form
    for variant in ("GAIT", "GAIT-N", "GAIT-S", "GAIT-SN"):
        assert all(_corr(rows, variant, "float32", "difference", k) > 0.999 for k in layers)
    assert abs(_corr(rows, "GAIT-N", "float32", "paper", 1)) < 0.5
    # references: FA and TP agree with BP at the output layer only
    for variant in ("FA", "TP"):
        assert _corr(rows, variant, "float64", "-", 7) > 0.9999
        assert _corr(rows, variant, "float64", "-", 1) < 0.9


def test_fig2b_rows_are_the_alignment_of_the_rules_update(small_rows):
    rows, (images, labels) = small_rows
    rule = correlation.build_variant(correlation.VARIANTS[0], form="absolute", seed=0, width=32, depth=6).double()
    x = correlation.to_inputs(images, torch.float64)
    updates = rule.local_gradients(x, labels)
    reference = backprop_gradients(rule.net, x, labels)
    for k in (1, 4, 7):
        expected = gradient_alignment(updates[k - 1][0], reference[k - 1][0])
        (row,) = [r for r in rows if (r["variant"], r["dtype"], r["form"], r["layer"]) == ("GAIT", "float64", "paper", k)]
        assert row["corr"] == pytest.approx(expected["corr"], abs=1e-12)
        assert row["angle"] == pytest.approx(expected["angle"], abs=1e-9)


def test_variants_of_a_network_are_fits_network_under_its_seed():
    """Network j of every variant is what fit draws under --seed_everything j; only the activation differs."""
    torch.manual_seed(3)
    expected = InvertibleMLP(in_features=3072, width=16, depth=2, num_classes=10)
    for variant in (*correlation.VARIANTS, *correlation.REFERENCES):
        rule = correlation.build_variant(variant, form="difference", seed=3, width=16, depth=2)
        assert [k for k, _ in rule.net.state_dict().items()] == [k for k in expected.state_dict()]
        assert all(torch.equal(a, b) for a, b in zip(rule.net.state_dict().values(), expected.state_dict().values()))
        if variant.target_forms:
            assert rule.target_mode == "difference"
    fa = correlation.build_variant(correlation.REFERENCES[1], seed=3, width=16, depth=2)
    assert fa.feedback_seed == 3 and fa.net.square_output
    with pytest.raises(ValueError, match="form"):
        correlation.build_variant(correlation.VARIANTS[0], form=None)


def test_summary_statistics_and_nan_are_kept():
    rows = [{"variant": "V", "dtype": "float64", "form": "paper", "layer": 1, "corr": c, "angle": a}
            for c, a in ((0.5, 60.0), (0.7, 45.0), (0.9, 25.0))]
    (s,) = correlation.summarize(rows)
    assert s["corr_mean"] == pytest.approx(0.7)
    assert s["corr_std"] == pytest.approx(0.2)  # sample std
    assert (s["corr_median"], s["corr_min"], s["corr_max"]) == (0.7, 0.5, 0.9)
    assert s["angle_mean"] == pytest.approx(130.0 / 3)
    rows.append({"variant": "V", "dtype": "float64", "form": "paper", "layer": 1, "corr": math.nan, "angle": math.nan})
    (s,) = correlation.summarize(rows)
    assert s["n_nan"] == 1 and math.isnan(s["corr_mean"]) and math.isnan(s["corr_std"])
    assert s["corr_min"] == 0.5  # statistics of the defined values are still reported


def test_batches_are_distinct_and_seeded(tiny_cifar_root):
    a = correlation.load_batches(tiny_cifar_root, nets=3, batch_size=8, verify_checksums=False)
    b = correlation.load_batches(tiny_cifar_root, nets=3, batch_size=8, verify_checksums=False)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[1][0])
    with pytest.raises(ValueError, match="batch-size"):
        correlation.load_batches(tiny_cifar_root, nets=1, batch_size=10_000, verify_checksums=False)


@pytest.mark.e2e
def test_correlation_command_writes_csvs_and_png(tiny_cifar_root, tmp_path, capsys):
    code = correlation.main(["--data-dir", str(tiny_cifar_root), "--out", str(tmp_path), "--quick",
                             "--no-verify-checksums", "--dtypes", "float64"])
    assert code == 0
    rows = correlation.read_csv(tmp_path / "fig2b_correlation.csv")
    summary = correlation.read_csv(tmp_path / "fig2b_summary.csv")
    assert {r["variant"] for r in rows} == {"GAIT", "GAIT-N", "GAIT-S", "GAIT-SN", "TP", "FA"}
    assert {r["net"] for r in rows} == {0, 1} and {r["layer"] for r in rows} == {1, 2, 3, 4}
    assert len(summary) == len(rows) // 2
    assert (tmp_path / "fig2b_correlation.png").stat().st_size > 10_000
    assert "PASS float64 paper GAIT-N" in capsys.readouterr().out
    assert correlation.main(["--out", str(tmp_path), "--plot-only"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--dtypes", "float16"], "--dtypes"),
    (["--data-dir", "/nonexistent/folder"], "--data-dir"),
])
def test_correlation_command_rejects_bad_options(argv, message, tmp_path, capsys):
    assert correlation.main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_perturbation_grows_the_deviation_and_lowers_the_correlation():
    net = correlation.build_variant(correlation.VARIANTS[1], form="absolute", seed=0, width=32, depth=3).net.double()
    directions = orthogonality.draw_directions(net, 0)
    assert directions[0] is None and all(d is not None for d in directions[1:])
    unchanged = orthogonality.perturb(net, directions, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), unchanged.parameters()))
    deviations = [orthogonality_deviation(orthogonality.perturb(net, directions, s).layers[1].weight)
                  for s in (0.01, 0.1)]
    # ||W W^T - I||_F / sqrt(n) ~ sqrt(2) (s + s^2) for W + s N(0, 1/n)
    assert 0.5 * 0.01 < deviations[0] < 3 * 0.01 and 0.5 * 0.1 < deviations[1] < 3 * 0.11

    g = torch.Generator().manual_seed(2)
    batch = (torch.randint(0, 256, (16, 3072), dtype=torch.uint8, generator=g), torch.randint(0, 10, (16,), generator=g))
    rows = orthogonality.measure_drift(0, batch, scales=(0.0, 0.03, 0.3), width=32, depth=3)
    curves = orthogonality.drift_curves(rows, "GAIT-N")
    x, corr1 = curves[1][0], curves[1][1]
    assert x[0] < x[1] < x[2]
    assert corr1[0] > 0.9999 > corr1[1] > corr1[2]
    assert min(curves[4][1]) > 0.9999  # the output layer inverts nothing


@pytest.mark.e2e  # a whole experiment, or every regime
def test_orthogonality_command(tiny_cifar_root, tmp_path):
    code = orthogonality.main(["--data-dir", str(tiny_cifar_root), "--out", str(tmp_path), "--quick",
                               "--no-verify-checksums", "--nets", "1", "--scales", "0,0.1"])
    assert code == 0
    rows = correlation.read_csv(tmp_path / "orthogonality_drift.csv")
    assert {r["variant"] for r in rows} == {"GAIT-N", "GAIT-SN"}
    assert (tmp_path / "orthogonality_drift.png").is_file()
    assert orthogonality.main(["--scales", "-1", "--out", str(tmp_path)]) == 2


def test_regimes_come_from_fits_parser():
    """A regime is its config as fit parses it; overrides are fit's own flags."""
    fa = build_regime("fa")
    assert (fa.lr, fa.betas, fa.adam_eps, fa.ortho_weight) == (2.5e-5, (0.9, 0.99), 1e-4, 0.0)
    assert not fa.net.square_output and fa.net.width == 500
    gait = build_regime("gait_smooth_norm")
    assert gait.normalize and gait.eta == 1e-7 and gait.ortho_weight == 100.0 and gait.target_mode == "absolute"
    assert gait.net.activation_name == "smooth_leaky_relu" and (gait.net.width, gait.net.depth) == (500, 6)
    small = build_regime("gait_norm", *model_args(target_mode="difference", ortho_weight=0),
                         *net_args(width=24, depth=2, square_output=True))
    assert small.target_mode == "difference" and small.ortho_weight == 0.0
    assert (small.net.width, small.net.depth, small.net.in_features, small.net.num_classes) == (24, 2, 3072, 10)
    cli = regime_cli("bp", "--trainer.precision", "32-true")
    assert cli.trainer.precision == "32-true" and cli.trainer.loggers == [] and cli.datamodule.batch_size == 256
    with pytest.raises(ValueError, match="regime"):
        build_regime("sgd")
    with pytest.raises(ValueError, match="invalid overrides .*etaa"):
        build_regime("gait_norm", "--model.init_args.etaa", "1e-7")


@pytest.mark.e2e  # a whole experiment, or every regime
def test_training_command_records_test_accuracy(tiny_cifar_root, tmp_path):
    code = training.main(["--data-dir", str(tiny_cifar_root), "--out", str(tmp_path), "--regimes", "bp,gait_norm",
                          "--epochs", "1", "--evals-per-epoch", "2", "--no-verify-checksums"])
    assert code == 0
    runs = training.read_runs(tmp_path)
    assert set(runs) == {"bp", "gait_norm"}
    # 320 training images = 2 batches of 256 and 64: evaluations at 0, 1/2 and 2/2 epochs
    assert [float(r["epoch"]) for r in runs["gait_norm"]] == [0.0, 0.5, 1.0]
    assert [int(r["step"]) for r in runs["gait_norm"]] == [0, 1, 2]

    # epoch 0 is the untrained network of the same seed on the (tiny) test set
    from lightning_gait.data import CIFAR10DataModule

    rule = build_regime("bp", seed=0).double()
    dm = CIFAR10DataModule(data_dir=str(tiny_cifar_root), download=False, val_size=0, verify_checksums=False)
    dm.setup("fit")
    x = dm.preprocess(dm.data_test.images, torch.float64)
    accuracy = (rule.net(x).argmax(1) == dm.data_test.labels).double().mean().item()
    assert float(runs["bp"][0]["test_acc"]) == pytest.approx(accuracy)

    # beside each curve, the resolved config that fit accepts: the regime, the seed, the test set as validation
    config = yaml.safe_load((tmp_path / "gait_norm_s0" / "config.yaml").read_text())
    assert config["model"]["class_path"] == "lightning_gait.GAITProp" and config["seed_everything"] == 0
    assert config["data"]["init_args"]["val_size"] == 0 and config["trainer"]["max_epochs"] == 1
    assert config["trainer"]["val_check_interval"] == 1 and config["data"]["init_args"]["data_dir"] == str(tiny_cifar_root)
    assert resolved_config(["--config", str(tmp_path / "gait_norm_s0" / "config.yaml")])

    with open(tmp_path / "summary.csv") as f:
        summary = {row["regime"]: row for row in csv.DictReader(f)}
    assert summary["gait_norm"]["status"] == "ok"
    assert float(summary["gait_norm"]["final_test_acc"]) == float(runs["gait_norm"][-1]["test_acc"])
    assert float(summary["bp"]["best_test_acc"]) == max(float(r["test_acc"]) for r in runs["bp"][1:])
    assert (tmp_path / "fig2a_training.png").is_file()
    assert training.main(["--out", str(tmp_path), "--plot-only"]) == 0


def test_training_command_rejects_unknown_regime(tmp_path, capsys):
    assert training.main(["--regimes", "bp,sgd", "--out", str(tmp_path)]) == 2
    assert "sgd" in capsys.readouterr().err


@pytest.mark.e2e  # a whole experiment, or every regime
def test_tracked_training_records_orthogonality_and_alignment(tiny_cifar_root, tmp_path):
    summary = training.train_regime("gait_norm", data_dir=tiny_cifar_root, out=tmp_path / "tracked", epochs=1,
                                    verify_checksums=False, track_alignment=True)
    assert summary["status"] == "ok"
    rows = correlation.read_csv(tmp_path / "tracked" / "gait_norm_s0" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0.0, 1.0]
    untrained, trained = rows
    assert untrained["ortho_dev"] < 1e-5 < trained["ortho_dev"]  # Adam moves the weights off orthogonal
    assert all(r["bp_corr_layer_7"] > 0.9999 for r in rows)  # the output layer inverts nothing
    assert 0.9 < trained["bp_corr_layer_1"] <= 1.0
    assert set(orthogonality.read_trained(tmp_path / "tracked")) == {"gait_norm"}  # the drift figure's crosses


def test_report_tables_come_from_the_csvs(tmp_path, capsys):
    from experiments import report

    summary = [{"variant": "GAIT-N", "dtype": "float64", "form": "paper", "layer": k, "corr_mean": 0.99993,
                "corr_std": 1e-5, "corr_median": 0.999991, "corr_min": 0.99991} for k in (1, 2)]
    table = report.correlation_table(summary, "float64", "paper", statistic="min", digits=5)
    assert table.splitlines()[2] == "| GAIT-N | 0.99991 | 0.99991 |"
    assert "0.9999 ± 0.0000" in report.correlation_table(summary, "float64", "paper")
    assert report.main(["--out", str(tmp_path)]) == 2  # nothing there


def test_report_prints_the_committed_20_epoch_table_by_default(capsys):
    """``python -m experiments.report`` prints Fig. 2A's table from results/fig2a, as its README shows it."""
    from experiments import report

    results = Path(__file__).resolve().parents[2] / "results"
    if not (results / "fig2a" / "summary.csv").is_file():
        pytest.skip("no committed results/fig2a")
    assert report.main(["--out", str(results)]) == 0
    printed = capsys.readouterr().out
    fig2a = printed.split("Fig. 2A: CIFAR-10 test accuracy", 1)[1]
    assert "results/fig2a" in fig2a.splitlines()[0]
    table = [line for line in fig2a.splitlines() if line.startswith("| ")]
    gait_n = next(line for line in table if line.startswith("| GAIT-N | "))
    assert gait_n.startswith("| GAIT-N | 20 | 0 | 44.19 | 44.37 | 19 |")
    readme = (results / "fig2a" / "README.md").read_text()
    assert all(line in readme for line in table)  # the README's table is the command's output

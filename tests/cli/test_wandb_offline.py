"""Offline W&B: the .wandb reader, and the diagnostics of a short `fit` with conf/gait_norm.yaml read back."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_gait import fit, wandb_history
from lightning_gait.wandb_history import (
    WandbFileError,
    find_run_file,
    history_keys,
    is_complete,
    iter_records,
    read_history,
    wait_until_complete,
)

from conftest import REPO_ROOT
LAYERS = 7  # conf/gait_norm.yaml: 3072 -> 6 x width -> width, 7 linear layers

#: every test here writes W&B runs, whose service is a process of its own
pytestmark = pytest.mark.e2e


def _offline_run(tmp_path: Path, log) -> Path:
    import wandb

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        run = wandb.init(project="reader-test", dir=str(tmp_path), config={"seed": 0})
        try:
            log(run)
        finally:
            run.finish()
    path = find_run_file(tmp_path / "wandb")
    assert wait_until_complete(path, timeout_s=60), "W&B did not finish writing the run file"
    return path


def test_reader_reads_back_every_logged_value(tmp_path):
    big = {f"wide/key_{j:04d}": j / 7 for j in range(1500)}  # one record of ~50 KiB: spans a block

    def log(run):
        run.log(big)
        for i in range(200):
            run.log({"loss/layer_1": i / 3, "odd": float("nan") if i == 5 else -i, "nested": {"a": i}})

    path = _offline_run(tmp_path, log)
    data = path.read_bytes()
    assert len(data) > 3 * wandb_history.BLOCK_SIZE  # several blocks, so block boundaries are exercised
    kinds = {kind for kind, _ in wandb_history._pieces(data, path)}
    assert {wandb_history.FULL, wandb_history.FIRST, wandb_history.LAST} <= kinds

    rows = read_history(path)
    assert rows[0] | big == rows[0] and all(rows[0][k] == v for k, v in big.items())
    losses = [r["loss/layer_1"] for r in rows if "loss/layer_1" in r]
    assert losses == [i / 3 for i in range(200)]  # exact float round trip
    odd = [r["odd"] for r in rows if "odd" in r]
    assert math.isnan(odd[5]) and odd[:5] == [0, -1, -2, -3, -4]
    assert [r["nested.a"] for r in rows if "nested.a" in r] == list(range(200))
    assert [r["_step"] for r in rows] == list(range(201))
    # the run folder and the wandb folder resolve to the same file
    assert find_run_file(path.parent) == path and find_run_file(tmp_path) == path


def test_reader_rejects_corrupt_and_foreign_files(tmp_path):
    path = _offline_run(tmp_path, lambda run: run.log({"a": 1.0}))
    data = bytearray(path.read_bytes())
    # flip one byte inside the first record's payload: its CRC no longer matches
    corrupt = tmp_path / "corrupt.wandb"
    data_bad = bytearray(data)
    data_bad[wandb_history.HEADER_SIZE * 2 + 3] ^= 0xFF
    corrupt.write_bytes(bytes(data_bad))
    with pytest.raises(WandbFileError, match="CRC"):
        list(iter_records(corrupt))
    foreign = tmp_path / "foreign.wandb"
    foreign.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WandbFileError, match="not a .wandb file"):
        list(iter_records(foreign))
    # a run still being written: a cut in the middle of a record keeps the rows before it
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(bytes(data[: len(data) - 20]))
    with pytest.warns(RuntimeWarning, match="truncated"):
        rows = read_history(cut)
    assert [r["a"] for r in rows if "a" in r] == [1.0]
    assert is_complete(path) and not is_complete(cut)
    with pytest.raises(FileNotFoundError):
        find_run_file(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def gait_norm_run(tiny_cifar_root, tmp_path_factory) -> Path:
    """A 2-epoch `fit --config conf/gait_norm.yaml` on the generated dataset, W&B offline.

    Only the width (32 instead of 500) and the batch size (64) are changed, for speed:
    depth, float64, GAIT-N and the diagnostic callbacks are the config's own.
    """
    import wandb

    out = tmp_path_factory.mktemp("gait_norm_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.chdir(out)
        code = fit.main([
            "--config", str(REPO_ROOT / "conf" / "gait_norm.yaml"),
            "--data.data_dir", str(tiny_cifar_root), "--data.verify_checksums", "false",
            "--data.val_size", "64", "--data.batch_size", "64",
            "--model.init_args.net.init_args.width", "32",
            "--trainer.max_epochs", "2",
            "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.enable_progress_bar", "false",
        ])
        wandb.finish()
    assert code == 0
    assert wait_until_complete(find_run_file(out / "wandb"), timeout_s=60), "W&B did not finish writing"
    return out


def test_fit_gait_norm_logs_every_diagnostic_for_every_layer(gait_norm_run):
    path = find_run_file(gait_norm_run / "wandb")
    rows = read_history(path)
    keys = set(history_keys(rows))
    every_layer = ("bp_corr", "bp_cos", "bp_angle", "bp_norm_ratio", "target_norm",
                   "log10_multiplier", "log10_multiplier_min", "log10_multiplier_max")
    inverted_layers = ("gamma", "gamma_min", "gamma_max", "ortho", "cond")  # layers 2..7 (layer 1 is not square)
    expected = {f"{f}/layer_{k}" for f in every_layer for k in range(1, LAYERS + 1)}
    expected |= {f"{f}/layer_{k}" for f in inverted_layers for k in range(2, LAYERS + 1)}
    missing = expected - keys
    assert not missing, sorted(missing)
    assert not {f"{f}/layer_{LAYERS + 1}" for f in every_layer} & keys  # no layer beyond the network
    assert {"train/acc_epoch", "val/acc", "test/acc"} <= keys

    # measured at the first batch; GAIT-N in float64 at the orthogonal init equals backprop
    first = next(r for r in rows if "bp_corr/layer_1" in r)
    assert first["trainer/global_step"] == 0
    for k in range(1, LAYERS + 1):
        assert first[f"bp_corr/layer_{k}"] >= 0.9999
        assert -1.0 <= first[f"bp_cos/layer_{k}"] <= 1.0
    gamma_rows = [r for r in rows if "gamma/layer_2" in r]
    assert all(r["gamma_min/layer_2"] <= r["gamma/layer_2"] <= r["gamma_max/layer_2"] for r in gamma_rows)

    # W&B charts at each validation end: a bar chart of bp_corr per layer, line charts per family
    charts = [r for r in rows if "charts/bp_corr_by_layer_table.path" in r]
    assert len(charts) == 2  # two epochs, two validations (the sanity check draws none)
    table = json.loads((path.parent / "files" / charts[-1]["charts/bp_corr_by_layer_table.path"]).read_text())
    assert table["columns"] == ["layer", "bp_corr"]
    assert [row[0] for row in table["data"]] == [f"layer_{k}" for k in range(1, LAYERS + 1)]
    for family in ("bp_corr", "target_norm", "gamma", "ortho", "cond"):
        assert f"charts/{family}_table.path" in keys, family


def test_plot_from_the_offline_run(gait_norm_run, tmp_path):
    from lightning_gait import plot

    code = plot.main([str(gait_norm_run / "wandb"), "--out", str(tmp_path)])
    assert code == 0
    names = {p.name for p in tmp_path.glob("*.png")}
    assert {"accuracy.png", "bp_alignment.png", "target_norms.png", "orthogonality.png"} <= names
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))


def test_history_listing_is_one_line_per_family(gait_norm_run, capsys):
    assert wandb_history.main([str(gait_norm_run / "wandb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines[1:] if not line.startswith("  W&B")}
    assert {"bp_corr/layer_1..7", "ortho/layer_2..7", "gamma/layer_2..7", "val/acc", "test/acc"} <= listed
    assert not any(name.startswith(("charts/", "_")) or "/layer_" in name and ".." not in name for name in listed)
    assert len(lines) < 40
    assert any(line.startswith("  W&B tables (") and "charts/bp_corr_table" in line for line in lines)
    assert lines[-1] == "  W&B's own: _runtime, _step, _timestamp"
    # --all: every key, the tables' fields too
    assert wandb_history.main([str(gait_norm_run / "wandb"), "--all"]) == 0
    every = capsys.readouterr().out.split()
    assert "charts/bp_corr_table.sha256" in every and "bp_corr/layer_7" in every


def test_plot_draws_every_offline_run_of_a_wandb_folder(tmp_path, capsys):
    """`plot outputs/wandb` with several offline runs drew the newest only (issue 23), into
    figures that replaced the others' and without naming the run: now each run gets its
    own subfolder of figures, named after the run's folder."""
    import wandb

    from lightning_gait import plot

    out = tmp_path / "outputs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for k in range(2):
            run = wandb.init(project="plot-test", dir=str(out), config={"seed": k})
            try:
                for step in range(4):
                    run.log({"val/acc": 0.1 * (k + 1) + 0.01 * step, "trainer/global_step": step})
            finally:
                run.finish()
    run_files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2
    for path in run_files:
        assert wait_until_complete(path, timeout_s=60), path
    assert plot.main([str(out / "wandb")]) == 0
    printed = sorted(capsys.readouterr().out.split())
    expected = sorted(str(out / "wandb" / "plots" / path.parent.name / "accuracy.png") for path in run_files)
    assert printed == expected
    assert sorted(str(p) for p in (out / "wandb" / "plots").rglob("*.png")) == expected

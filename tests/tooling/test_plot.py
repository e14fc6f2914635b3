"""`python -m lightning_gait.plot`: figures from a CSV-logged run (float64 training, CPU)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_gait import GAITProp, InvertibleMLP, plot
from lightning_gait.callbacks import BPCorrelation, Orthogonality, TargetNorms
from lightning_gait.families import DIAGNOSTICS

from conftest import REPO_ROOT
FIGURES = {"accuracy.png", "bp_alignment.png", "bp_alignment_at_init.png", "target_norms.png", "orthogonality.png"}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> Path:
    """A 2-epoch GAIT-N run (48 -> 4 x 32, float64) logged by CSVLogger with all three callbacks."""
    root = tmp_path_factory.mktemp("csv_run")
    torch.manual_seed(0)
    x, y = torch.rand(256, 48), torch.randint(0, 10, (256,))
    data = DataLoader(TensorDataset(x, y), batch_size=64)
    rule = GAITProp(InvertibleMLP(48, 32, 4, 10), normalize=True, lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=2, precision="64-true", accelerator="cpu", logger=CSVLogger(str(root)), log_every_n_steps=1,
        callbacks=[BPCorrelation(every_n_steps=1, at_init=True, init_networks=3), TargetNorms(every_n_steps=1),
                   Orthogonality(every_n_steps=1)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=2,
    )
    trainer.fit(rule, data, data)
    trainer.test(rule, data, verbose=False)
    return Path(trainer.logger.log_dir)


def test_load_csv_keeps_every_logged_value(csv_run):
    series, source, kind = plot.load_run(csv_run)
    assert kind == "csv" and source.name == "metrics.csv"
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [(float(r["step"]), float(r["bp_corr/layer_3"])) for r in rows if r["bp_corr/layer_3"]]
    steps, values = series["bp_corr/layer_3"]
    assert list(zip(steps, values)) == expected and len(expected) == 8  # 8 steps, every step
    assert [k for k, _, _ in plot.layer_series(series, "ortho")] == [2, 3, 4, 5]
    assert [k for k, _, _ in plot.layer_series(series, "bp_corr")] == [1, 2, 3, 4, 5]


@pytest.mark.e2e
def test_plot_command_writes_non_empty_pngs(csv_run):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gait.plot", str(csv_run / "metrics.csv")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert {p.name for p in written} == FIGURES
    assert all(p.parent == csv_run / "plots" for p in written)  # default: a plots folder beside the run
    for path in written:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path.name


def test_clear_errors(tmp_path):
    assert plot.main([str(tmp_path / "missing")]) == 2
    assert plot.main([str(tmp_path)]) == 2  # a folder with no run in it
    empty = tmp_path / "metrics.csv"
    empty.write_text("step,something_else\n0,1.0\n")
    assert plot.main([str(empty), "--out", str(tmp_path / "o")]) == 1
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a metrics .csv"):
        plot.load_run(tmp_path / "notes.txt")


def _series_near_one() -> plot.Series:
    """bp_corr for layers 1-3 at one step (values within 1e-4 of 1), ortho for the square layers 2-3."""
    return {
        "bp_corr/layer_1": ([50.0], [0.99991]), "bp_corr/layer_2": ([50.0], [0.99996]),
        "bp_corr/layer_3": ([50.0], [0.99999]),
        "ortho/layer_2": ([100.0], [0.0021]), "ortho/layer_3": ([100.0], [0.0019]),
    }


def test_a_layer_keeps_its_colour_across_panels_and_axes_have_no_offset():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series_near_one()
    fig, (corr, ortho) = plt.subplots(1, 2)
    plot._layer_panel(corr, series, "bp_corr", title="", ylabel="", log=False)
    plot._layer_panel(ortho, series, "ortho", title="", ylabel="", log=False)
    fig.canvas.draw()
    colour = {ax: {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in (corr, ortho)}
    assert colour[corr]["layer 2"] == colour[ortho]["layer 2"] == plot.layer_colour(2, 3)
    assert colour[corr]["layer 3"] == colour[ortho]["layer 3"] != colour[corr]["layer 1"]
    # the three values span 8e-5: matplotlib would label the axis "+9.999e-1" and ticks in 1e-5
    assert corr.yaxis.get_major_formatter().get_offset() == ""
    labels = [float(t.get_text().replace("−", "-")) for t in corr.get_yticklabels() if t.get_text()]
    assert labels and all(0.9998 < v < 1.0001 for v in labels)
    plt.close(fig)


def test_every_skipped_figure_is_named_with_its_reason(tmp_path, capsys):
    rows = [{"step": 50, "train/acc_step": 0.1, **{k: v[1][0] for k, v in _series_near_one().items()
                                                  if k.startswith("bp_corr")}},
            {"step": 100, "ortho/layer_2": 0.0021, "ortho/layer_3": 0.0019}]
    path = tmp_path / "metrics.csv"
    keys = ["step", "train/acc_step", "bp_corr/layer_1", "bp_corr/layer_2", "bp_corr/layer_3",
            "ortho/layer_2", "ortho/layer_3"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    assert plot.main([str(path)]) == 0  # in this process: the command itself runs in the test above
    result = capsys.readouterr()
    assert {Path(p).name for p in result.out.split()} == {"accuracy.png", "bp_alignment.png", "orthogonality.png"}
    assert result.err.splitlines() == [
        "skipped target_norms.png: the run logged no target_norm/layer_k, gamma/layer_k or "
        "log10_multiplier/layer_k (logged by TargetNorms, on in the GAIT-prop and TP configs)",
        "skipped bp_alignment_at_init.png: the run logged no bp_corr_init/layer_k "
        "(logged by BPCorrelation(at_init=True), which no shipped config turns on)",
    ]


def test_the_alignment_figure_names_float64_as_the_computation_dtype(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = []

    def keep_title(fig, path):
        titles.append(fig._suptitle.get_text())
        plt.close(fig)
        return path

    monkeypatch.setattr(plot, "_save", keep_title)
    plot.plot_diagnostic(DIAGNOSTICS["alignment"], _series_near_one(), tmp_path, "run")
    assert titles == ["run: alignment of each layer's update with backprop (computed in float64)"]

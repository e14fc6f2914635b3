"""Each diagnostic declared once (lightning_gait.families): the shipped declarations match
what the diagnostics compute, and one new declaration brings its figure, its dashboard
section and its callback's charts with it."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from lightning_gait import GAITProp, InvertibleMLP, dashboard, plot
from lightning_gait.callbacks import BPCorrelation, DiagnosticCallback, Orthogonality, TargetNorms
from lightning_gait.diagnostics import orthogonality_metrics, rule_alignment, target_metrics
from lightning_gait.families import DIAGNOSTICS, Diagnostic, Panel, first_layer, register_diagnostic

LAYERS = 4  # InvertibleMLP(12, 8, 3, 5): 12 -> 8 -> 8 -> 8 -> 8 (square output)


def _families(metrics: dict) -> dict:
    """``family -> sorted layer numbers`` of ``{family}/layer_k`` keys."""
    out: dict = {}
    for key in metrics:
        family, k = re.fullmatch(r"(.+)/layer_(\d+)", key).groups()
        out.setdefault(family, []).append(int(k))
    return {family: sorted(ks) for family, ks in out.items()}


def test_the_shipped_declarations_are_what_the_diagnostics_compute():
    torch.manual_seed(0)
    net = InvertibleMLP(12, 8, 3, 5, square_output=True).double()
    rule = GAITProp(net, normalize=True)
    x, y = torch.rand(16, 12, dtype=torch.float64), torch.randint(0, 5, (16,))
    computed = {
        "alignment": _families(rule_alignment(rule, x, y)),
        "targets": _families(target_metrics(rule.last_diagnostics)),
        "orthogonality": _families(orthogonality_metrics(net)),
    }
    assert list(DIAGNOSTICS) == list(computed)
    for name, families in computed.items():
        declared = DIAGNOSTICS[name]
        assert set(declared.families) == set(families), name
        for family, layers in families.items():
            assert layers == list(range(first_layer(family), LAYERS + 1)), family
    # the callbacks chart one family per declared panel
    assert BPCorrelation.chart_families == ("bp_corr", "bp_cos", "bp_angle", "bp_norm_ratio")
    assert TargetNorms.chart_families == ("target_norm", "gamma", "log10_multiplier")
    assert Orthogonality.chart_families == ("ortho", "cond")


class WeightNorms(DiagnosticCallback):
    """The callback a new diagnostic names (imported by the dashboard from this module)."""

    chart_families = ("weight_norm", "bias_norm")


@pytest.fixture
def weight_norms():
    declared = register_diagnostic(Diagnostic(
        "weight_norms",
        panels=(Panel("weight_norm", "||W||_F", "Frobenius norm", scale="log"),
                Panel("bias_norm", "||b||", first_layer=2)),
        figure="weight_norms.png", title="weight norms", section="weight norms", logged_by="WeightNorms",
        callback=f"{__name__}.WeightNorms",
    ))
    yield declared
    del DIAGNOSTICS["weight_norms"]


def _write_csv(path, rows):
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k != "step", k))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_declared_diagnostic_gets_its_figure(weight_norms, tmp_path):
    rows = [{"step": s, "train/acc_step": 0.1 * s, **{f"weight_norm/layer_{k}": 10.0 ** (k + s) for k in (1, 2, 3)},
             **{f"bias_norm/layer_{k}": 0.5 * k + s for k in (2, 3)}} for s in (0, 1, 2)]
    written, skipped = plot.plot_figures(_write_csv(tmp_path / "metrics.csv", rows), out=tmp_path / "plots")
    assert {p.name for p in written} == {"accuracy.png", "weight_norms.png"}
    data = (tmp_path / "plots" / "weight_norms.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "skipped bp_alignment.png: the run logged no bp_corr/layer_k, bp_cos/layer_k, bp_angle/layer_k or " \
           "bp_norm_ratio/layer_k (logged by BPCorrelation, which every shipped config turns on)" in skipped

    # a run without it: its figure is skipped, naming its keys and what logs them
    _, skipped = plot.plot_figures(_write_csv(tmp_path / "other.csv", [{"step": 0, "train/acc_step": 0.1}]),
                                   out=tmp_path / "plots2")
    assert "skipped weight_norms.png: the run logged no weight_norm/layer_k or bias_norm/layer_k " \
           "(logged by WeightNorms)" in skipped


def test_a_declared_diagnostic_draws_its_panels_on_their_scales(weight_norms, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = []

    def keep(fig, path):
        kept.append([(ax.get_title(), ax.get_yscale(), [line.get_label() for line in ax.get_lines()])
                     for ax in fig.axes if ax.get_visible()])
        plt.close(fig)
        return path

    monkeypatch.setattr(plot, "_save", keep)
    series = {f"weight_norm/layer_{k}": ([0.0, 1.0], [2.0, 3.0]) for k in (1, 2, 3)}
    series.update({f"bias_norm/layer_{k}": ([0.0, 1.0], [0.1, 0.2]) for k in (2, 3)})
    plot.plot_diagnostic(weight_norms, series, tmp_path, "run")
    assert kept == [[("||W||_F", "log", ["layer 1", "layer 2", "layer 3"]),
                     ("||b||", "linear", ["layer 2", "layer 3"])]]


def test_a_declared_diagnostic_gets_its_dashboard_section(weight_norms, tmp_path):
    out = tmp_path / "workspace.json"
    assert dashboard.main(["--dry-run", "--entity", "e", "--project", "p", "--layers", "3", "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    sections = {s["name"]: s["panels"] for s in spec["sections"]}
    assert [s["name"] for s in spec["sections"]][:6] == [
        "accuracy and loss", "alignment with backprop", "targets", "orthogonality", "weight norms", "speed"]
    assert sections["weight norms"] == [
        {"type": "LinePlot", "title": "weight_norm per layer", "x": dashboard.X_AXIS,
         "keys": ["weight_norm/layer_1", "weight_norm/layer_2", "weight_norm/layer_3"]},
        {"type": "LinePlot", "title": "bias_norm per layer", "x": dashboard.X_AXIS,
         "keys": ["bias_norm/layer_2", "bias_norm/layer_3"]},
    ]
    charts = {key for panel in sections["charts logged by the callbacks"] for key in panel["keys"]}
    assert {"charts/weight_norm_table", "charts/bias_norm_table", "charts/bp_corr_table"} <= charts
    # the weight-norm panel is on a log axis in the saved view too
    lines = {p["config"]["chartTitle"]: p["config"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]
             for p in s["panels"] if p.get("viewType") == "Run History Line Plot"}
    assert lines["weight_norm per layer"].get("yLogScale") is True
    assert not lines["bias_norm per layer"].get("yLogScale")

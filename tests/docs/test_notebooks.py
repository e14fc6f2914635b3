"""The figure notebooks execute, so that they never rot: on the tiny dataset, and on the committed results,
whose outputs (figures included) are saved in the notebooks."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments import conv_comparison, curves

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "lightning-gait-tests"


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernel spec for this very interpreter (the venv's), installed into a temporary prefix."""
    prefix = tmp_path_factory.mktemp("kernel")
    kernelspec.install(prefix=str(prefix), kernel_name=KERNEL)
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    yield KERNEL
    patch.undo()


def execute(name: str, kernel: str) -> "nbformat.NotebookNode":
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def headline_figures() -> int:
    """Figures the headline notebook draws from the committed results: each figure of the mlp_gap
    experiment file, and one per CNN pair whose runs have reached the comparison's epoch (10)."""
    count = len(curves.grid_spec("mlp_gap")["figures"])
    for pair in conv_comparison.PAIRS:
        try:
            conv_comparison.compare(10, folder=REPO / "results" / "cnn", pair=pair)
        except LookupError:
            continue
        count += 1
    return count


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def text(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))


@pytest.fixture
def tiny_run_env(monkeypatch, tiny_cifar_root, tmp_path):
    monkeypatch.setenv("LIGHTNING_GAIT_DATA_DIR", str(tiny_cifar_root))
    monkeypatch.setenv("LIGHTNING_GAIT_RESULTS", str(tmp_path))
    monkeypatch.setenv("LIGHTNING_GAIT_RUN", "1")
    monkeypatch.setenv("LIGHTNING_GAIT_QUICK", "1")
    monkeypatch.setenv("LIGHTNING_GAIT_VERIFY_CHECKSUMS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # CI's setting: figures must still reach the outputs
    return tmp_path


@pytest.mark.e2e  # a whole experiment in a kernel
def test_fig2b_notebook_runs_and_draws(kernel_name, tiny_run_env):
    nb = execute("fig2b_correlation.ipynb", kernel_name)
    assert images(nb) == 2  # the correlation bars and the drift curves
    assert "GAIT-SN" in text(nb)
    assert (tiny_run_env / "fig2b_summary.csv").is_file()


@pytest.mark.e2e  # a whole experiment in a kernel
def test_fig2a_notebook_runs_and_draws(kernel_name, tiny_run_env):
    nb = execute("fig2a_training.ipynb", kernel_name)
    assert images(nb) == 1
    assert "GAIT-N" in text(nb) and "BP" in text(nb)
    assert sorted(p.parent.name for p in tiny_run_env.glob("*_s*/metrics.csv")) == ["bp_s0", "gait_norm_s0"]
    assert (tiny_run_env / "summary.csv").is_file() and (tiny_run_env / "bp_s0" / "config.yaml").is_file()


PARAMETERS = ("LIGHTNING_GAIT_RESULTS", "LIGHTNING_GAIT_DATA_DIR", "LIGHTNING_GAIT_RUN", "LIGHTNING_GAIT_QUICK",
              "LIGHTNING_GAIT_VERIFY_CHECKSUMS")


def cell_outputs(nb) -> list:
    """Per code cell: its printed text and its number of figures."""
    return [("".join(out.get("text", "") for out in cell.get("outputs", [])),
             sum("image/png" in out.get("data", {}) for out in cell.get("outputs", [])))
            for cell in nb.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name, figures", [("fig2a_training.ipynb", 1), ("fig2b_correlation.ipynb", 2),
                                           ("headline.ipynb", None)])
def test_committed_notebooks_hold_their_figures(name, figures):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    figures = headline_figures() if figures is None else figures
    assert images(nb) == figures
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            assert png is None or len(png) > 20_000  # a drawn figure, base64


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["fig2a_training.ipynb", "fig2b_correlation.ipynb"])
def test_committed_outputs_are_what_the_committed_results_give(name, kernel_name, monkeypatch):
    """Executed with its defaults (the committed CSVs), a notebook prints what it holds; else rerun
    ``python scripts/execute_notebooks.py``."""
    if not (REPO / "results" / "fig2b_summary.csv").is_file() or not (REPO / "results" / "fig2a").is_dir():
        pytest.skip("no committed results/ to draw")
    for key in PARAMETERS:
        monkeypatch.delenv(key, raising=False)
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert cell_outputs(execute(name, kernel_name)) == cell_outputs(committed)


@pytest.mark.e2e
def test_headline_notebook_draws_the_committed_runs(kernel_name, monkeypatch):
    """The headline notebook reads results/mlp_gap and results/cnn, which grow while runs continue,
    so its saved outputs are checked for figures, not compared line by line."""
    results = REPO / "results"
    if not any((results / "mlp_gap").glob("*_s*/metrics.csv")):
        pytest.skip("no committed results/mlp_gap to draw")
    monkeypatch.setenv("LIGHTNING_GAIT_HEADLINE_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = execute("headline.ipynb", kernel_name)
    assert images(nb) == headline_figures()  # the controlled curves, the full length (and the CNN)
    assert "GAIT-N, paper form, float64" in "".join(
        out.get("data", {}).get("text/markdown", "") for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []))

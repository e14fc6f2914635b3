"""``python scripts/execute_notebooks.py``: run the figure notebooks and save them with their outputs.

Each notebook in ``notebooks/`` runs from that folder with its own defaults (the committed
CSVs under ``results/``, no training) and is written back in place, outputs and figures
included, so that the repository shows them. Run it from a checkout, in the environment of
``requirements.txt``, after the results change; ``tests/test_notebooks.py`` checks that the
saved outputs are what the notebooks produce from the committed results.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: the environment variables through which the tests set the notebooks' parameters
PARAMETERS = ("LIGHTNING_GAIT_RESULTS", "LIGHTNING_GAIT_DATA_DIR", "LIGHTNING_GAIT_RUN", "LIGHTNING_GAIT_QUICK",
              "LIGHTNING_GAIT_VERIFY_CHECKSUMS", "LIGHTNING_GAIT_HEADLINE_RESULTS", "LIGHTNING_GAIT_HEADLINE_EPOCH",
              "LIGHTNING_GAIT_CONV_EPOCH")


def execute(path: Path, kernel_name: str = "python3", timeout: int = 600):
    """``path`` executed with the notebook's defaults (its cells see none of :data:`PARAMETERS`)."""
    import nbclient
    import nbformat

    saved = {key: os.environ.pop(key) for key in PARAMETERS if key in os.environ}
    try:
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.update(saved)
    return nb


def main() -> int:
    import nbformat

    os.environ.setdefault("MPLBACKEND", "Agg")
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = execute(path)
        nbformat.write(nb, path)
        figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
        print(f"{path.relative_to(NOTEBOOKS.parent)}: executed, {figures} figure(s) saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())

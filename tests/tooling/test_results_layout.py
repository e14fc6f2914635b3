"""The committed results: every curve has the resolved config it trained with beside it, which fit
accepts and which is the stack its folder is named after; every experiment's README names the command
that reruns it and the one that rebuilds its tables, and the latter rebuilds the committed tables."""
from __future__ import annotations

import csv
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.common import resolved_config, stack_args

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
RUN_ID = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)$")


def _csvs_with_epoch():
    found = []
    for path in sorted(RESULTS.rglob("*.csv")):
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if "epoch" in header:
            found.append(path)
    return found


def _config_folders():
    return sorted(p.parent for p in RESULTS.rglob("config.yaml"))


def _stack(name: str) -> list:
    """The config stack a run folder's name derives from (the inverse of experiments.stacks.run_name)."""
    first, *rest = name.split("+")
    regime = first.replace("-", "/", 1) if first.startswith("conv-") else first
    return [regime] + [f"variants/{v}" for v in rest]


def test_every_curve_has_its_config_beside_it():
    """A CSV with an ``epoch`` column is a run's curve (``metrics.csv``, config.yaml in the same folder)
    or a table derived from curves, whose every row names the run folders it comes from (``run`` and
    ``seed`` columns, or a ``source`` column of ``;``-separated folders), each with its config.yaml."""
    curves = _csvs_with_epoch()
    assert any(p.name == "metrics.csv" for p in curves)
    for path in curves:
        if path.name == "metrics.csv":
            assert (path.parent / "config.yaml").is_file(), f"{path.relative_to(REPO)} has no config.yaml beside it"
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            if row.get("run") and row.get("seed"):
                folders = [path.parent / f"{row['run']}_s{row['seed']}"]
            else:
                assert row.get("source"), f"{path.relative_to(REPO)}: a row names no run ({row})"
                folders = [REPO / s if not Path(s).is_absolute() else Path(s) for s in row["source"].split(";")]
            for folder in folders:
                assert (folder / "config.yaml").is_file(), f"{path.relative_to(REPO)}: {folder} has no config.yaml"


@functools.lru_cache(maxsize=None)
def _resolved(*args: str) -> dict:
    return yaml.safe_load(resolved_config(list(args)))


@pytest.mark.parametrize("folder", _config_folders(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_fit_accepts_the_config_and_it_is_the_stack_its_folder_names(folder, monkeypatch):
    """``fit --config results/.../config.yaml --print_config`` accepts it (run in this process), and the
    rule, network, precision, inputs and step budget it holds are what the folder's stack resolves to
    now (the protocol, validation split, seed and logging may differ: they are the run's own). A stack
    is resolved once for all its folders."""
    monkeypatch.chdir(REPO)
    printed = _resolved("--config", str(folder / "config.yaml"))
    match = RUN_ID.match(folder.name)
    assert match, f"{folder}: a run folder is named RUN_sSEED"
    assert printed["seed_everything"] == int(match["seed"])
    now = _resolved(*stack_args(_stack(match["name"])))
    assert printed["model"] == now["model"], folder
    assert printed["trainer"]["precision"] == now["trainer"]["precision"], folder
    assert printed["trainer"]["max_steps"] == now["trainer"]["max_steps"], folder
    assert printed["data"]["init_args"]["normalize_channels"] == now["data"]["init_args"]["normalize_channels"], folder


def _experiment_folders():
    return sorted(p for p in RESULTS.iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", _experiment_folders(), ids=lambda p: p.name)
def test_every_experiment_has_a_readme_with_its_commands(folder):
    """Each results/EXPERIMENT/README.md holds a command that reruns the experiment (a block marked
    ``results-test: skip``) and one that rebuilds its tables and figures (``results-test: run``)."""
    readme = folder / "README.md"
    assert readme.is_file(), f"{folder.relative_to(REPO)} has no README.md"
    kinds = [spec.split(":")[0].strip() for spec, _ in _blocks(readme)]
    assert "skip" in kinds, f"{readme.relative_to(REPO)}: no command that reruns the experiment"
    assert "run" in kinds, f"{readme.relative_to(REPO)}: no command that rebuilds its tables"


def _blocks(readme: Path):
    """``(marker, code)`` of the bash blocks marked ``<!-- results-test: ... -->``."""
    text = readme.read_text()
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"<!-- results-test: (.*?) -->\s*\n```bash\n(.*?)```", text, re.S)]


def _rebuild_cases():
    """Each command of the READMEs' rebuild blocks once (several READMEs name the same command), with
    the README that names it first; a command that only prints is left to the ``--write`` one that
    writes what it prints."""
    commands = {}
    for readme in sorted(RESULTS.glob("*/README.md")) + [RESULTS / "README.md"]:
        for spec, code in _blocks(readme) if readme.is_file() else []:
            for line in code.splitlines() if spec.strip() == "run" else []:
                command = " ".join(line.split("#", 1)[0].split())
                if command:
                    commands.setdefault(command, readme)
    return [pytest.param(readme, command, id=command.removeprefix("python -m experiments."))
            for command, readme in commands.items() if f"{command} --write" not in commands]


@pytest.mark.e2e
@pytest.mark.parametrize("readme, code", _rebuild_cases())
def test_the_rebuild_commands_give_the_committed_tables(readme, code, tmp_path):
    """Run a command of a README's rebuild block in a copy of results/ and compare every CSV it writes
    with the committed one: the committed tables are what their command gives from the committed curves."""
    work = tmp_path / "checkout"
    shutil.copytree(RESULTS, work / "results")
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg", WANDB_MODE="offline")
    done = subprocess.run(["bash", "-e", "-c", code.replace("python ", f"{sys.executable} ")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in sorted((work / "results").rglob("*.csv")):
        committed = RESULTS / path.relative_to(work / "results")
        assert committed.is_file(), f"{readme.relative_to(REPO)}: the command writes {committed.relative_to(REPO)}, not committed"
        assert path.read_text() == committed.read_text(), f"{committed.relative_to(REPO)} differs from what its command writes"


def _tables(text: str):
    """The markdown tables of ``text``: lists of consecutive lines starting with ``|``."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_results_readmes_tables_are_their_commands_output(capsys, monkeypatch):
    """Every table of results/README.md and results/*/README.md whose header a reader command prints is
    that command's table, row for row (so no number in them is typed by hand)."""
    from experiments import conv_comparison, headline, levers, peers, report

    monkeypatch.chdir(REPO)
    printed = []
    for command in (lambda: report.main(["--out", "results"]), lambda: headline.main(["mlp_gap", "--epoch", "20"]),
                    lambda: peers.main(["table", "peers"]), lambda: conv_comparison.main(["--epoch", "10"]),
                    lambda: levers.main(["cnn_levers"])):
        assert command() == 0
        printed += _tables(capsys.readouterr().out)
    by_header = {}
    for table in printed:
        by_header.setdefault(table[0], []).append(table)
    checked = 0
    for readme in [RESULTS / "README.md", *sorted(RESULTS.glob("*/README.md"))]:
        for table in _tables(readme.read_text()):
            if table[0] in by_header:
                assert table in by_header[table[0]], f"{readme.relative_to(REPO)}: a table differs from its command's"
                checked += 1
    assert checked >= 8  # Fig. 2B (MLP, CNN), Fig. 2A (twice), mlp_gap (twice), peers (twice), the CNN's two, cnn_levers

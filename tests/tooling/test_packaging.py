"""The package as others get it: a wheel with its configs, and the Docker image's recipe."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The package built as a wheel from a copy of the repository's files and installed into a folder.

    Built without build isolation (setuptools from this environment, no network) and installed
    without dependencies (they come from this environment); returns the install folder.
    """
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "lightning_gait", source / "lightning_gait",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(root / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = next((root / "dist").glob("lightning_gait-*.whl"))
    target = root / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return target


def run_installed(target: Path, args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(target)  # the installed copy first; its dependencies from this environment
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.e2e
def test_the_wheel_holds_every_config(installed_wheel):
    shipped = {p.relative_to(installed_wheel / "lightning_gait" / "conf").as_posix()
               for p in (installed_wheel / "lightning_gait" / "conf").rglob("*.yaml")}
    in_repo = {p.relative_to(REPO_ROOT / "lightning_gait" / "conf").as_posix()
               for p in (REPO_ROOT / "lightning_gait" / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    assert {"base.yaml", "gait_norm.yaml", "conv/gait_norm.yaml", "trainer/ddp_cpu.yaml",
            "sweeps/gait_norm_eta.yaml"} <= shipped


@pytest.mark.e2e
def test_installed_package_runs_fit_with_a_config_name_outside_the_checkout(installed_wheel, tmp_path):
    result = run_installed(installed_wheel, ["-m", "lightning_gait.fit", "--config", "gait_norm", "--print_config"],
                           tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class_path: lightning_gait.GAITProp" in result.stdout and "max_epochs: 200" in result.stdout
    assert result.stderr == ""


#: run in the installed package: where it is imported from, two more ways to name a config, --help
PROBE = """
import contextlib, io, json, sys
import lightning_gait
from lightning_gait import fit

def printed(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = fit.main(args)
        except SystemExit as stop:
            code = stop.code
    return {"code": code or 0, "out": out.getvalue()}

print(json.dumps({"file": lightning_gait.__file__,
                  "path": printed(["--config", "conf/gait_norm.yaml", "--print_config"]),
                  "conv": printed(["--config", "conv/gait_norm", "--print_config"]),
                  "help": printed(["--help"])}))
"""


@pytest.mark.e2e
def test_installed_package_takes_paths_and_group_names_and_lists_names(installed_wheel, tmp_path):
    import json

    result = run_installed(installed_wheel, ["-c", PROBE], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(probe["file"]).is_relative_to(installed_wheel)
    assert probe["path"]["code"] == 0 and "class_path: lightning_gait.GAITProp" in probe["path"]["out"]
    assert probe["conv"]["code"] == 0 and "lightning_gait.InvertibleCNN" in probe["conv"]["out"]
    assert probe["help"]["code"] == 0
    listing = probe["help"]["out"].split("Configs: --config NAME", 1)[1]
    assert f"shipped in {installed_wheel / 'lightning_gait' / 'conf'}" in listing
    assert "\n  gait_norm " in listing and "\n  conv/gait_norm " in listing


# ---------------------------------------------------------------------- Docker
def dockerignore_sends(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative, POSIX) into the build context.

    Docker's rules: patterns in order, the last that matches decides, ``!`` re-includes, a
    pattern matching a folder matches everything below it, ``**`` matches any number of folders.
    """
    sent = True
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # the path and the folders above it
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            sent = line.startswith("!")
    return sent


def dockerfile_instructions() -> list:
    lines, current = [], ""
    for raw in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def test_dockerignore_keeps_environments_data_and_outputs_out():
    for heavy in (".venv/bin/python", ".ci-venv/lib/x.py", "data/cifar-10-batches-py/data_batch_1", "outputs/a.ckpt",
                  "results/fig2b_correlation.png", ".git/HEAD", "lightning_gait/__pycache__/fit.cpython-311.pyc",
                  "wandb/latest-run/x"):
        assert not dockerignore_sends(heavy), heavy
    for needed in ("requirements-runtime.txt", "pyproject.toml", "lightning_gait/fit.py",
                   "lightning_gait/conf/gait_norm.yaml", "benchmarks/bench.py", "experiments/report.py"):
        assert dockerignore_sends(needed), needed


def test_dockerfile_installs_dependencies_before_the_code_and_copies_only_what_is_sent():
    steps = dockerfile_instructions()
    copies = [(i, step.split()[1:-1]) for i, step in enumerate(steps) if step.startswith("COPY ")]
    installs = [i for i, step in enumerate(steps) if step.startswith("RUN pip install -r ")]
    assert len(installs) == 1 and "requirements-runtime.txt" in steps[installs[0]]
    # before the dependency layer only the pins are copied, so that a code edit keeps that layer
    assert [src for i, sources in copies if i < installs[0] for src in sources] == ["requirements-runtime.txt"]
    for _, sources in copies:
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
            probe = source if (REPO_ROOT / source).is_file() else f"{source}/__init__.py"
            assert dockerignore_sends(probe), f"COPY {source}, but .dockerignore leaves it out"


def test_image_installs_the_runtime_stack_only():
    runtime = (REPO_ROOT / "requirements-runtime.txt").read_text()
    for tool in ("pytest", "nbclient", "nbformat", "ipykernel"):
        assert tool not in runtime
    development = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    assert "-r requirements-runtime.txt" in development and "-e ." in development
    pins = {line.split("==")[0] for line in runtime.splitlines() if "==" in line and not line.startswith("#")}
    assert {"torch", "torchvision", "pytorch-lightning", "wandb"} <= pins


def test_readme_docker_run_keeps_outputs_and_passes_the_wandb_key():
    readme = (REPO_ROOT / "README.md").read_text()
    run = re.search(r"docker run [^`]*?lightning-gait[^`]*?--config[^\n]*", readme.replace("\\\n", " "))
    assert run, "no docker run command in the README"
    command = run.group(0)
    workdir = [step.split()[1] for step in dockerfile_instructions() if step.startswith("WORKDIR ")][-1]
    assert re.search(rf'-v "?[^ ]+:{re.escape(workdir)}/outputs"?', command), command  # base.yaml writes outputs/
    assert "-e WANDB_API_KEY" in command

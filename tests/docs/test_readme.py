"""The README's commands run as written: every ``bash`` block is marked run or skipped, and the run ones pass.

A block's marker is the HTML comment on the line above it:

* ``<!-- readme-test: run -->``: run here, in a scratch copy of the checkout (the repository's
  folders linked into a temporary folder, ``../shared/data`` beside it), with ``python`` and
  ``.venv/bin/python`` meaning this interpreter, and no W&B key (so W&B logs offline, as for a
  new user). ``run; creates GLOB ...`` also names files the block must create there;
* ``<!-- readme-test: slow -->``: the same, under ``pytest -m slow``;
* ``<!-- readme-test: skip: REASON -->``: not runnable here, and why.

``../shared/data`` is the real CIFAR-10 when the development machine has it, else a generated
data set in CIFAR-10's format (large enough for the configs' 5,000 validation images).
Training commands of ``lightning_gait.fit`` are shortened to two batches per phase (and, on
generated data, told not to check the published checksums); nothing else is changed.

``<!-- readme-test: python -->`` blocks run in order as one Python session (the library
snippet defines ``net``, a later one trains it), with the trainer's batches limited likewise.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, write_tiny_cifar

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
BLOCK = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```\s*$", re.S | re.M)
MARKER = re.compile(r"<!-- readme-test: (?P<spec>.*?) -->\s*$")
#: what a scratch checkout links to (the rest of the repository is not needed to run the README)
LINKED = ("lightning_gait", "conf", "experiments", "benchmarks", "results", "notebooks", "scripts", "tests",
          "README.md", "pyproject.toml", "requirements.txt", "requirements-runtime.txt")
#: appended to a training `fit` command: two batches per phase
SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]


def readme_blocks():
    """``(line, lang, code, spec)`` of every fenced block; ``spec`` is the marker's text or None."""
    text = README.read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        blocks.append((line, m.group("lang"), m.group("code"), marker.group("spec") if marker else None))
    return blocks


def parse_spec(spec: str):
    """``(kind, creates, reason)`` of a marker: kind is run, slow or skip."""
    kind, _, rest = spec.partition(";") if not spec.startswith("skip") else ("skip", "", spec)
    kind = kind.strip()
    if kind == "skip":
        return "skip", [], spec.partition(":")[2].strip()
    creates = rest.strip().split()
    if creates and creates[0] == "creates":
        creates = creates[1:]
    elif creates:
        raise ValueError(f"unknown marker {spec!r}")
    return kind, creates, ""


def bash_cases():
    cases = []
    for line, lang, code, spec in readme_blocks():
        if lang != "bash" or spec is None:
            continue
        kind, creates, _ = parse_spec(spec)
        if kind == "skip":
            continue
        marks = [pytest.mark.slow] if kind == "slow" else []
        cases.append(pytest.param(line, code, creates, id=f"line{line}", marks=marks))
    return cases


def test_every_bash_block_is_marked_and_every_skip_has_a_reason():
    blocks = [(line, spec) for line, lang, _, spec in readme_blocks() if lang == "bash"]
    assert blocks
    unmarked = [line for line, spec in blocks if spec is None]
    assert not unmarked, f"README bash blocks without a readme-test marker at lines {unmarked}"
    for line, spec in blocks:
        kind, _, reason = parse_spec(spec)
        assert kind in ("run", "slow", "skip"), (line, spec)
        assert kind != "skip" or reason, f"line {line}: a skip without a reason"
    assert sum(parse_spec(spec)[0] == "run" for _, spec in blocks) >= 3


# ---------------------------------------------------------------------- a scratch checkout
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The folder ``../shared/data`` points to: the real CIFAR-10 if present, else a generated one."""
    if (SHARED_DATA / "cifar-10-batches-py" / "data_batch_1").is_file():
        return SHARED_DATA
    # 5 x 1,100 training images: 500 left after the configs' 5,000-image validation split
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), per_batch=1100, test_size=512)


def generated(data_root: Path) -> bool:
    return data_root != SHARED_DATA


def scratch_checkout(root: Path, data_root: Path) -> Path:
    """``root/checkout`` linking the repository's folders, ``root/shared/data``, ``.venv/bin/python``."""
    checkout = root / "checkout"
    checkout.mkdir()
    for name in LINKED:
        (checkout / name).symlink_to(REPO_ROOT / name)
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data_root)
    for folder in (checkout / ".venv" / "bin", root / "bin"):
        folder.mkdir(parents=True)
        wrapper = folder / "python"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        wrapper.chmod(0o755)
    return checkout


def new_user_env(root: Path) -> dict:
    """This environment without W&B settings or keys, ``python`` first on PATH, HOME in ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LIGHTNING_GAIT_"))}
    env.update({"HOME": str(root), "NETRC": str(root / "no-netrc"), "MPLBACKEND": "Agg",
                "PATH": f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"})
    env.pop("PYTHONPATH", None)  # the checkout's own lightning_gait, found from the working folder
    return env


def commands(code: str):
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        out.append(re.sub(r"\s+#\s.*$", "", line))  # a trailing comment
    return out


def shortened(command: str, data_root: Path) -> str:
    """A training ``fit`` command with :data:`SHORT` appended; any other command as it is."""
    words = shlex.split(command)
    trains = ("lightning_gait.fit" in words and not {"--help", "-h"} & set(words)
              and not any(w.startswith("--print_config") for w in words))
    if not trains:
        return command
    extra = SHORT + (["--data.verify_checksums", "false"] if generated(data_root) else [])
    return command + " " + " ".join(extra)


@pytest.mark.parametrize("line, code, creates", bash_cases())
def test_readme_block_runs(line, code, creates, data_root, tmp_path):
    checkout = scratch_checkout(tmp_path, data_root)
    env = new_user_env(tmp_path)
    for command in commands(code):
        run = shortened(command, data_root)
        result = subprocess.run(["bash", "-c", run], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (
            f"README line {line}: `{command}` failed (exit {result.returncode}; run as `{run}`)\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    for pattern in creates:
        assert glob.glob(str(checkout / pattern)), f"README line {line}: no {pattern} after the block"


# ---------------------------------------------------------------------- the Python snippets
#: before the snippets: this test's only changes (two batches per phase; the generated data's checksums)
PRELUDE = '''
import functools
import pytorch_lightning as pl
import lightning_gait.data

_Trainer = pl.Trainer

class _ShortTrainer(_Trainer):
    def __init__(self, *args, **kwargs):
        for phase in ("train", "val", "test"):
            kwargs.setdefault(f"limit_{phase}_batches", 2)
        super().__init__(*args, **kwargs)

pl.Trainer = _ShortTrainer
if GENERATED:
    lightning_gait.data.CIFAR10DataModule = functools.partial(lightning_gait.data.CIFAR10DataModule,
                                                              verify_checksums=False)
'''

EPILOGUE = '''
assert trainer.state.finished and trainer.global_step == 2, trainer.state
assert len(grads) == net.num_layers and len(bp) == net.num_layers
print("README python session: OK")
'''


def test_readme_python_session_runs(data_root, tmp_path):
    snippets = [(line, code) for line, lang, code, spec in readme_blocks() if lang == "python" and spec == "python"]
    assert len(snippets) >= 3
    checkout = scratch_checkout(tmp_path, data_root)
    script = f"GENERATED = {generated(data_root)!r}\n" + PRELUDE
    for line, code in snippets:
        script += f"\n# README line {line}\n" + code
    script += EPILOGUE
    (checkout / "readme_session.py").write_text(script)
    result = subprocess.run([sys.executable, "readme_session.py"], cwd=checkout, env=new_user_env(tmp_path),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "README python session: OK" in result.stdout

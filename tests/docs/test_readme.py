"""The README and ``docs/*.md`` run as written: every command block is marked, and the runnable ones pass.

Every fenced block names its language. ``bash`` and ``python`` blocks are commands, and each
carries a marker, the HTML comment on the line above it; ``text`` and ``yaml`` blocks are
not commands. The markers:

* bash ``<!-- readme-test: run -->``: run here; ``run; creates GLOB ...`` also names files
  the block must leave behind;
* bash ``<!-- readme-test: slow -->``: the same, in a checkout of its own, under ``pytest -m slow``;
* python ``<!-- readme-test: python -->``: the document's python blocks run in order as one
  Python session (its own namespace; the documents' sessions share one process);
  ``python; creates GLOB ...`` names files the session must leave behind;
* python ``<!-- readme-test: module NAME -->``: part of the importable module ``NAME`` that
  a test of its own builds and trains (``test_extending.py``); here they are compiled only;
* ``<!-- readme-test: skip: REASON -->``: not runnable here, and why;
* text ``<!-- readme-test: printed -->``: what the ``run`` block above it prints; each line's
  label (the text before `` = `` or the first ``:``) must be a label of a line it printed.

How they run. One scratch copy of the checkout for all documents (the repository's folders
linked into a temporary folder, ``../shared/data`` beside it; ``python`` and
``.venv/bin/python`` mean this interpreter; no W&B key, so W&B logs offline, as for a new
user). A document's ``run`` blocks run in order, each command in its own ``bash -c``; the
python sessions run after the ``run`` blocks of their documents, in that checkout. A
document that uses what another one made says so once, in a comment of its own:
``<!-- readme-test: after README.md -->`` (that document's blocks run first).

``../shared/data`` is the real CIFAR-10 when the development machine has it, else a
generated data set in CIFAR-10's format (large enough for the configs' 5,000 validation
images). Training commands of ``lightning_gait.fit`` are shortened to two batches per phase
(and, on generated data, told not to check the published checksums), and so are the
trainers of the python sessions; nothing else is changed.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import SHARED_DATA, write_tiny_cifar

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
#: the documents whose commands are checked: the README, then docs/ in name order
DOCUMENTS = [README] + sorted((REPO_ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```\s*$", re.S | re.M)
MARKER = re.compile(r"<!-- readme-test: (?P<spec>.*?) -->\s*$")
AFTER = re.compile(r"^<!-- readme-test: after (?P<doc>\S+) -->\s*$", re.M)
#: the languages a block may have: commands, and the rest
COMMAND_LANGS = ("bash", "python")
OTHER_LANGS = ("text", "yaml")
#: what a scratch checkout links to (the rest of the repository is not needed to run the documents)
LINKED = ("lightning_gait", "conf", "experiments", "benchmarks", "results", "notebooks", "scripts", "tests",
          "docs", "README.md", "pyproject.toml", "requirements.txt", "requirements-runtime.txt")
#: appended to a training `fit` command: two batches per phase
SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2"]


def name(doc: Path) -> str:
    """``README.md``, ``docs/training.md``: a document as the tests and markers call it."""
    return doc.relative_to(REPO_ROOT).as_posix()


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    spec: Optional[str]

    @property
    def where(self) -> str:
        return f"{name(self.doc)} line {self.line}"


def blocks(doc: Path) -> List[Block]:
    """Every fenced block of ``doc``, with the marker above it (or None)."""
    text = doc.read_text()
    found = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        found.append(Block(doc, line, m.group("lang"), m.group("code"), marker.group("spec") if marker else None))
    return found


def dependencies(doc: Path) -> List[Path]:
    """The documents ``doc`` says it runs after."""
    return [REPO_ROOT / m.group("doc") for m in AFTER.finditer(doc.read_text())]


def parse_spec(spec: str):
    """``(kind, args, reason)`` of a marker: kind is run, slow, python, module or skip."""
    if spec.startswith("skip"):
        return "skip", [], spec.partition(":")[2].strip()
    if spec.startswith("module "):
        return "module", spec.split()[1:], ""
    kind, _, rest = spec.partition(";")
    words = rest.split()
    if words and words[0] == "creates":
        words = words[1:]
    elif words:
        raise ValueError(f"unknown marker {spec!r}")
    return kind.strip(), words, ""


# ---------------------------------------------------------------------- every block is marked
@pytest.mark.parametrize("doc", DOCUMENTS, ids=name)
def test_every_command_block_is_marked_and_every_skip_has_a_reason(doc):
    allowed = {"bash": ("run", "slow", "skip"), "python": ("python", "module", "skip")}
    for block in blocks(doc):
        assert block.lang in COMMAND_LANGS + OTHER_LANGS, (
            f"{block.where}: a block in {block.lang or 'no language'}; give it one of {COMMAND_LANGS + OTHER_LANGS}")
        if block.lang not in COMMAND_LANGS:
            assert block.spec in (None, "printed"), f"{block.where}: marker {block.spec!r} on a {block.lang} block"
            assert block.spec is None or printed_by(block) is not None, f"{block.where}: no run block above it"
            continue
        assert block.spec is not None, f"{block.where}: a {block.lang} block without a readme-test marker"
        kind, args, reason = parse_spec(block.spec)
        assert kind in allowed[block.lang], f"{block.where}: marker {block.spec!r} on a {block.lang} block"
        assert kind != "skip" or reason, f"{block.where}: a skip without a reason"
        assert kind != "module" or len(args) == 1, f"{block.where}: `module` names one module"
    for dep in dependencies(doc):
        assert dep in DOCUMENTS, f"{name(doc)} runs after {dep}, which is not a checked document"


def test_the_readme_and_the_docs_run_commands():
    kinds = [parse_spec(b.spec)[0] for doc in DOCUMENTS for b in blocks(doc) if b.spec]
    assert kinds.count("run") >= 5 and kinds.count("python") >= 4, kinds


def test_module_blocks_compile():
    for doc in DOCUMENTS:
        for block in blocks(doc):
            if block.spec and parse_spec(block.spec)[0] == "module":
                compile(block.code, block.where, "exec")


def test_the_readme_tests_what_ci_runs():
    """The README's test commands are the ones `.ci/run` runs: the default suite, then the e2e runs."""
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
          if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci == ["python -m pytest -q", "python -m pytest -q -m e2e"], ci
    readme = [line for b in blocks(README) if b.lang == "bash" for line in commands(b.code)]
    assert all(command in readme for command in ci), (ci, readme)


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
    for item in LINKED:
        (checkout / item).symlink_to(REPO_ROOT / item)
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


def printed_by(text_block: Block) -> Optional[Block]:
    """The ``run`` block whose output a ``printed`` block shows: the last one above it."""
    above = [b for b in blocks(text_block.doc) if b.line < text_block.line and b.lang == "bash"
             and b.spec and parse_spec(b.spec)[0] == "run"]
    return above[-1] if above else None


def label(line: str) -> str:
    line = line.strip()
    return line.split(" = ", 1)[0] if " = " in line else line.split(":", 1)[0]


def check_printed(text_block: Block, output: str) -> None:
    printed = {label(line) for line in output.splitlines() if line.strip()}
    missing = [label(line) for line in text_block.code.splitlines() if line.strip() and label(line) not in printed]
    assert not missing, f"{text_block.where}: the block above does not print lines labelled {missing}\n{output[-3000:]}"


def run_bash_block(block: Block, creates: List[str], checkout: Path, env: dict, data_root: Path) -> str:
    """Run the block's commands; their standard output, joined."""
    output = ""
    for command in commands(block.code):
        run = shortened(command, data_root)
        result = subprocess.run(["bash", "-c", run], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (
            f"{block.where}: `{command}` failed (exit {result.returncode}; run as `{run}`)\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        output += result.stdout
    for pattern in creates:
        assert glob.glob(str(checkout / pattern)), f"{block.where}: no {pattern} after the block"
    return output


#: before the python sessions: this test's only changes (two batches per phase; the generated
#: data's checksums)
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

#: each document's session in a namespace of its own; every trainer it leaves must have trained
SESSIONS = '''
for _doc, _blocks in SESSIONS:
    _namespace = {"__name__": "__main__"}
    for _where, _code in _blocks:
        exec(compile(_code, _where, "exec"), _namespace)
    for _value in list(_namespace.values()):
        if isinstance(_value, _Trainer):
            assert _value.state.finished and _value.global_step > 0, (_doc, _value.state)
    print(f"{_doc}: python session OK")
'''


def session_creates(docs: List[Path]) -> List[tuple]:
    return [(b, pattern) for doc in docs for b in python_sessions(doc) for pattern in parse_spec(b.spec)[1]]


def python_sessions(doc: Path) -> List[Block]:
    return [b for b in blocks(doc) if b.lang == "python" and b.spec and parse_spec(b.spec)[0] == "python"]


@dataclass
class Workspace:
    """One scratch checkout in which each document's ``run`` blocks run once, dependencies first."""

    checkout: Path
    env: dict
    data_root: Path
    done: Dict[Path, Optional[str]] = field(default_factory=dict)  # document -> None (passed) or its failure

    def run(self, doc: Path) -> None:
        if doc in self.done:
            if self.done[doc] is not None:
                pytest.fail(f"{name(doc)}, which this depends on, failed: {self.done[doc][:2000]}")
            return
        self.done[doc] = "a cycle of `after` comments"
        for dep in dependencies(doc):
            self.run(dep)
        try:
            outputs = {}
            for block in blocks(doc):
                kind, creates, _ = parse_spec(block.spec) if block.spec else (None, [], "")
                if block.lang == "bash" and kind == "run":
                    outputs[block.line] = run_bash_block(block, creates, self.checkout, self.env, self.data_root)
                elif block.spec == "printed":
                    check_printed(block, outputs[printed_by(block).line])
        except BaseException as err:
            self.done[doc] = str(err)
            raise
        self.done[doc] = None

    def run_sessions(self, docs: List[Path]) -> str:
        """The python sessions of ``docs``, in one process; its output."""
        for doc in docs:
            self.run(doc)
        sessions = [(name(doc), [(b.where, b.code) for b in python_sessions(doc)]) for doc in docs]
        script = f"GENERATED = {generated(self.data_root)!r}\nSESSIONS = {sessions!r}\n" + PRELUDE + SESSIONS
        (self.checkout / "docs_sessions.py").write_text(script)
        result = subprocess.run([sys.executable, "docs_sessions.py"], cwd=self.checkout, env=self.env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_root) -> Workspace:
    root = tmp_path_factory.mktemp("docs")
    return Workspace(scratch_checkout(root, data_root), new_user_env(root), data_root)


def runnable(doc: Path) -> bool:
    return any(b.spec and parse_spec(b.spec)[0] == "run" for b in blocks(doc) if b.lang == "bash")


@pytest.mark.e2e
@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if runnable(d)], ids=name)
def test_document_commands_run(doc, workspace):
    workspace.run(doc)


@pytest.mark.e2e
def test_document_python_sessions_run(workspace):
    docs = [doc for doc in DOCUMENTS if python_sessions(doc)]
    assert len(docs) >= 3
    printed = workspace.run_sessions(docs)
    for doc in docs:
        assert f"{name(doc)}: python session OK" in printed
    for block, pattern in session_creates(docs):
        assert glob.glob(str(workspace.checkout / pattern)), f"{block.where}: no {pattern} after the session"


def slow_cases():
    return [pytest.param(block, id=f"{name(doc)}:line{block.line}", marks=pytest.mark.slow)
            for doc in DOCUMENTS for block in blocks(doc)
            if block.lang == "bash" and block.spec and parse_spec(block.spec)[0] == "slow"]


@pytest.mark.parametrize("block", slow_cases())
def test_slow_block_runs(block, data_root, tmp_path):
    checkout = scratch_checkout(tmp_path, data_root)
    run_bash_block(block, parse_spec(block.spec)[1], checkout, new_user_env(tmp_path), data_root)

"""The README and ``docs/*.md`` point at things that exist: files, headings, modules; the README is a short front door.

* every relative link and image (``[text](path)``, ``[text](path#heading)``, ``(#heading)``)
  names a file or folder of the repository, and a heading of the Markdown file it names;
* every ``python -m MODULE`` written in the prose names a module of the repository or an
  installed one (the commands in fenced blocks are run or marked by ``test_readme.py``);
* every config named, as ``--config NAME`` anywhere or as ``variants/NAME`` (``conv/``,
  ``trainer/``, ``sweeps/``) in the prose, is a file of ``conf/``, also in the blocks that
  the tests do not run;
* the README has at most 300 lines and a table of contents that lists each of its sections.

Headings become anchors as on GitHub: lower case, punctuation other than ``-`` and ``_``
dropped, spaces to ``-``.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import List, Set

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
DOCUMENTS = [README] + sorted((REPO_ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```.*?^```\s*$", re.S | re.M)
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
MODULE = re.compile(r"python -m\s+(?P<module>[A-Za-z_][\w.]*)")


def name(doc: Path) -> str:
    return doc.relative_to(REPO_ROOT).as_posix()


def prose(doc: Path) -> str:
    """The document without its fenced blocks (each replaced by as many blank lines)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), doc.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Path) -> Set[str]:
    found: Set[str] = set()
    for line in prose(doc).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            base = slug(m.group(1))
            anchor, n = base, 1
            while anchor in found:  # repeated headings get -1, -2, ...
                anchor, n = f"{base}-{n}", n + 1
            found.add(anchor)
    return found


def links(doc: Path) -> List[str]:
    return [m.group("target") for m in LINK.finditer(prose(doc))]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=name)
def test_relative_links_point_to_files_and_headings_that_exist(doc):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif REPO_ROOT not in dest.parents and dest != REPO_ROOT:
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {name(dest)}")
    assert not broken, f"{name(doc)}: " + "; ".join(broken)


def module_exists(module: str) -> bool:
    """A module of the repository (its file, not imported), or an installed one (``pytest``)."""
    path = REPO_ROOT.joinpath(*module.split("."))
    if (REPO_ROOT / module.split(".")[0]).is_dir():
        return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("doc", DOCUMENTS, ids=name)
def test_commands_in_the_prose_name_modules_that_exist(doc):
    text = re.sub(r"\s+", " ", prose(doc))
    modules = {m.group("module").rstrip(".") for m in MODULE.finditer(text)}
    missing = sorted(m for m in modules if not module_exists(m))
    assert not missing, f"{name(doc)} runs modules that do not exist: {missing}"


CONF = REPO_ROOT / "conf"
CONFIG_FLAG = re.compile(r"--config[ =]+(?P<value>[^\s`$]+)")
CONFIG_NAME = re.compile(r"`(?:conf/)?(?P<value>(?:variants|conv|trainer|sweeps)/[\w.\-]+)`")


def config_exists(value: str) -> bool:
    """What ``fit --config VALUE`` finds: a file, else ``conf/VALUE`` (``conf/`` and ``.yaml`` optional)."""
    if (CONF.parent / value).is_file():  # a path from the repository root (a results config.yaml)
        return True
    value = value.removeprefix("conf/")
    return any((CONF / f"{value}{suffix}").is_file() for suffix in ("", ".yaml"))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=name)
def test_the_configs_named_exist(doc):
    named = {m.group("value") for m in CONFIG_FLAG.finditer(doc.read_text().replace("\\\n", " "))}
    named |= {m.group("value") for m in CONFIG_NAME.finditer(prose(doc))}
    # placeholders (NAME, <regime>) and the reader's own files (my_change.yaml) are not looked up
    named = {v for v in named if not re.search(r"[A-Z<]", v) and (not v.endswith(".yaml") or "/" in v)}
    missing = sorted(v for v in named if not config_exists(v))
    assert not missing, f"{name(doc)} names configs that do not exist: {missing}"


def test_readme_is_a_short_front_door_with_a_table_of_contents():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    sections = [line[3:] for line in prose(README).splitlines() if line.startswith("## ")]
    assert sections[0] == "Contents", sections
    contents = prose(README).split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([^)]+)\)", contents)
    assert listed == [slug(s) for s in sections[1:]], (listed, sections)


def test_the_docs_are_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    unlinked = [name(doc) for doc in DOCUMENTS[1:] if doc.resolve() not in linked]
    assert not unlinked, f"docs the README does not link: {unlinked}"

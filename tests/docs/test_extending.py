"""docs/extending.md's own network and data set, as the user would have them: module ``mypackage``,
matching backprop at initialisation and trained from the command the page gives."""
from __future__ import annotations

import shlex
import sys
import types

import numpy as np
import pytest
import torch

from lightning_gait import GAITProp, fit
from lightning_gait.diagnostics import rule_alignment
from test_readme import REPO_ROOT, blocks, commands, parse_spec

PAGE = REPO_ROOT / "docs" / "extending.md"


@pytest.fixture
def mypackage(monkeypatch):
    """The page's ``module mypackage`` blocks, executed as module ``mypackage``."""
    module = types.ModuleType("mypackage")
    monkeypatch.setitem(sys.modules, "mypackage", module)
    code = [b for b in blocks(PAGE) if b.spec and parse_spec(b.spec) == ("module", ["mypackage"], "")]
    assert len(code) == 2
    for block in code:
        exec(compile(block.code, block.where, "exec"), module.__dict__)
    return module


def the_command():
    """The page's bash command that trains ``mypackage``."""
    found = [c for b in blocks(PAGE) if b.lang == "bash" for c in commands(b.code) if "mypackage." in c]
    assert len(found) == 1
    return shlex.split(found[0])


def test_the_network_matches_backprop_at_initialisation(mypackage):
    net = mypackage.PixelMixNet(input_shape=(1, 16, 16), num_classes=10).double()
    x, y = torch.rand(8, 256, dtype=torch.float64), torch.randint(0, 10, (8,))
    corr = rule_alignment(GAITProp(net, normalize=True, eta=1e-7), x, y)
    assert min(v for k, v in corr.items() if k.startswith("bp_corr/")) >= 0.9999


def test_the_page_command_trains_the_network_on_the_data_set(mypackage, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "my-digits"
    folder.mkdir(parents=True)
    for file, n in (("train.npz", 96), ("test.npz", 32)):
        labels = rng.integers(0, 10, size=n)
        images = np.clip(labels[:, None, None, None] * 20 + rng.normal(0, 10, (n, 1, 16, 16)), 0, 255)
        np.savez(folder / file, images=images.astype(np.uint8), labels=labels.astype(np.int64))
    argv = the_command()
    assert argv[:3] == ["python", "-m", "lightning_gait.fit"]
    monkeypatch.chdir(tmp_path)
    code = fit.main(argv[3:] + ["--data.download", "false", "--data.val_size", "16", "--trainer.logger", "false",
                                "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert code == 0

"""Every regime's weight updates equal the ones recorded before the network contract existed.

``tests/fixtures/regime_updates.pt`` was written by ``tests/fixtures/make_regime_updates.py``
with the library as it was before its layers were opened to other networks: the updates of
every config in ``conf/`` (both target forms for GAIT-prop) on one small float64 network and
batch. The library must reproduce them to 1e-12 relative, from the initial parameters stored
with them (the network's orthogonal initialisation differs in its last float32 bits between
CPU kinds: see the maker's docstring).
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import FIXTURES


def _maker():
    spec = importlib.util.spec_from_file_location("make_regime_updates", FIXTURES / "make_regime_updates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKER = _maker()
RECORDED = torch.load(FIXTURES / "regime_updates.pt", weights_only=True)
VARIANTS = {key: (spec, form) for key, spec, form in MAKER.regime_variants()}


def _close(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.abs().max())
    return float((got - want).abs().max()) / (scale if scale > 0 else 1.0)


def test_every_recorded_regime_still_has_a_config():
    assert set(VARIANTS) >= set(RECORDED["updates"])


@pytest.mark.parametrize("key", sorted(RECORDED["updates"]))
def test_updates_match_the_recording(key):
    spec, form = VARIANTS[key]
    rule = MAKER.build(spec, form)
    for name, value in rule.state_dict().items():
        recorded = RECORDED["init"][key][name]
        if value.is_floating_point():
            # the same initialisation, up to the CPU's last float32 bits
            assert _close(value, recorded) <= 1e-5, f"{key}: initial {name} moved"
        else:
            assert torch.equal(value, recorded), f"{key}: initial {name} moved"
    rule.load_state_dict(RECORDED["init"][key])
    x, y = RECORDED["x"], RECORDED["y"]
    updates = rule.local_gradients(x, y)
    assert len(updates) == len(RECORDED["updates"][key])
    for layer, ((w, b), (w0, b0)) in enumerate(zip(updates, RECORDED["updates"][key]), start=1):
        assert _close(w, w0) <= 1e-12, f"{key}: weight update of layer {layer} moved"
        assert _close(b, b0) <= 1e-12, f"{key}: bias update of layer {layer} moved"
    for i, (g, g0) in enumerate(zip(MAKER.penalty_gradients(rule), RECORDED["penalty"][key])):
        assert _close(g, g0) <= 1e-12, f"{key}: orthogonality gradient of parameter {i} moved"


def test_checkpoint_keys_and_shapes_are_unchanged():
    """Checkpoints written before the network contract still load: same names, same shapes."""
    import json

    recorded = json.loads((FIXTURES / "regime_state_dicts.json").read_text())
    assert recorded == MAKER.state_dict_layout()

"""lightning_gait.malloc: freed tensors stay in the process (fit's setting), or leave it (glibc's default)."""
import os
import subprocess
import sys

import pytest

from lightning_gait.malloc import ENV_VAR

# a fresh process: allocate and touch 64 MiB, free it, and print how far the resident set fell
_PROBE = """
import torch
from lightning_gait.malloc import keep_freed_memory
kept = keep_freed_memory()
def rss_mb():
    with open('/proc/self/status') as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith('VmRSS:')) / 1024
t = torch.ones(16 * 2**20)
before = rss_mb()
del t
print(kept, before - rss_mb())
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/status"),
                                reason="glibc's allocator and /proc: Linux only")


def _probe(setting):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if setting is not None:
        env[ENV_VAR] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True).stdout
    kept, fell_mb = out.split()
    return kept == "True", float(fell_mb)


def test_freed_memory_stays_in_the_process():
    kept, fell_mb = _probe(None)
    assert kept
    assert fell_mb < 8, f"the resident set fell by {fell_mb:.1f} MiB when a 64 MiB tensor was freed"


def test_system_setting_leaves_glibc_defaults():
    kept, fell_mb = _probe("system")
    assert not kept
    assert fell_mb > 56, f"glibc's default should return the 64 MiB tensor's pages, fell by {fell_mb:.1f} MiB"


def test_fit_keeps_freed_memory(monkeypatch):
    from lightning_gait import fit

    calls = []
    monkeypatch.setattr("lightning_gait.malloc.keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(fit, "_main", lambda args=None: 0)
    assert fit.main([]) == 0
    assert calls == [1]

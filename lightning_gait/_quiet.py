"""Third-party console output that tells a user of this package nothing, switched off where it starts.

Installed by the ``fit`` command when it starts (:func:`quiet_third_party_output`), never
on import: a library imported into another program changes nothing global.

* Lightning's promotional tips (``💡 Tip: ... litlogger ...``, printed once per ``Trainer``):
  a filter on Lightning's rank-zero loggers drops records that start with ``💡 Tip``.
  Every other Lightning message passes.
* The ``LeafSpec`` deprecation that PyTorch raises (``FutureWarning``) when Lightning's own
  ``pytorch_lightning.utilities._pytree`` builds a leaf spec: ignored for that module only,
  so that the same warning raised from any other code is still shown.

W&B's console output is switched off where the run is configured
(:func:`lightning_gait.wandb_run.wandb_init_args`), and the ``Trainer.fit`` stop message held
back by ``fit`` (:class:`FitStopMessage`).
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

__all__ = ["FitStopMessage", "quiet_third_party_output"]

#: the loggers Lightning's ``rank_zero_info`` writes to (one per Lightning package)
LIGHTNING_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                               "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
TIP_PREFIX = "💡 Tip"
STOP_PREFIX = "`Trainer.fit` stopped: "


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


_DROP_TIPS = _DropTips()


def quiet_third_party_output() -> None:
    """Install the filters described in the module docstring (idempotent)."""
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_TIPS not in logger.filters:
            logger.addFilter(_DROP_TIPS)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")


class FitStopMessage(logging.Filter):
    """Holds back Lightning's ``Trainer.fit stopped: ...`` line while installed, keeping its reason.

    Lightning logs it while the progress bar's last line is still open, so on a terminal
    it is glued to the bar. ``fit`` prints :attr:`reason` in its summary instead::

        with FitStopMessage() as stop:
            trainer.fit(...)
        stop.reason  # "`max_epochs=1` reached.", or None
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: Optional[str] = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(STOP_PREFIX):
            self.reason = message[len(STOP_PREFIX):]
            return False
        return True

    def __enter__(self) -> "FitStopMessage":
        for name in LIGHTNING_RANK_ZERO_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in LIGHTNING_RANK_ZERO_LOGGERS:
            logging.getLogger(name).removeFilter(self)

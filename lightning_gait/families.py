"""Each diagnostic declared once: its metric families, its figure and its dashboard section.

A :class:`Diagnostic` lists its per-layer quantities (:class:`Panel`: a metric family
``{family}/layer_k``, how to draw it) and says which figure and which dashboard section
show them. :data:`DIAGNOSTICS` holds the shipped ones (alignment with backprop, targets,
orthogonality); the callbacks' W&B charts (:mod:`lightning_gait.callbacks`), the figures of
``python -m lightning_gait.plot`` and the panels of ``python -m lightning_gait.dashboard``
are read from it when they are made, so a diagnostic registered with
:func:`register_diagnostic` gets its figure and its dashboard section with no other change.
The computations live in :mod:`lightning_gait.diagnostics`, the logging in a callback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Panel", "Diagnostic", "DIAGNOSTICS", "register_diagnostic", "first_layer",
           "ALIGNMENT_FAMILIES", "TARGET_FAMILIES", "ORTHOGONALITY_FAMILIES"]

#: the y scales a panel may ask for
SCALES = ("linear", "log", "auto")


@dataclass(frozen=True)
class Panel:
    """One per-layer quantity over training: ``{family}/layer_k`` for every layer ``k``.

    Args:
        family: the metric family (the part of the key before ``/layer_k``).
        title, ylabel: the figure panel's title and y label (the dashboard titles its
            panels ``"{family} per layer"``).
        scale: ``"linear"``; ``"log"`` (positive values spanning decades: a log axis in the
            figure when every value is positive, and on the dashboard); ``"auto"`` (the
            figure goes log when positive values span more than a factor 100).
        band: the run also logs ``{family}_min`` and ``{family}_max``: the figure draws them
            as a band around the line, the dashboard gives each its own panel.
        first_layer: 2 for a family that layer 1 does not have (it maps the input to the
            width: not square, never inverted, no target below it).
    """

    family: str
    title: str
    ylabel: str = ""
    scale: str = "auto"
    band: bool = False
    first_layer: int = 1

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.first_layer not in (1, 2):
            raise ValueError(f"first_layer must be 1 or 2, got {self.first_layer!r}")

    @property
    def families(self) -> Tuple[str, ...]:
        """Every family the panel shows: its own, then ``_min`` and ``_max`` with ``band``."""
        return (self.family, f"{self.family}_min", f"{self.family}_max") if self.band else (self.family,)


@dataclass(frozen=True)
class Diagnostic:
    """A diagnostic declared once: its keys, its figure and its dashboard section.

    Args:
        name: the key in :data:`DIAGNOSTICS`.
        panels: its per-layer quantities, in order (figure panels, dashboard line plots,
            one W&B chart each from the callback).
        figure: the PNG that ``python -m lightning_gait.plot`` writes (drawn when the run
            logged any panel's family), titled ``"{run}: {title}"``.
        section: the dashboard section that holds its panels.
        logged_by: what logs it, said when a run lacks it.
        callback: the dotted path of the callback that logs it, if any: the dashboard draws
            the custom charts it logs.
        latest_bar: a family whose latest value per layer the dashboard also shows as bars.
        extra_lines: further dashboard line plots, ``(title, keys)``, of keys logged elsewhere.
    """

    name: str
    panels: Tuple[Panel, ...]
    figure: str
    title: str
    section: str
    logged_by: str
    callback: Optional[str] = None
    latest_bar: Optional[str] = None
    extra_lines: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()

    @property
    def families(self) -> Tuple[str, ...]:
        """Every metric family it logs (``{family}/layer_k``), in panel order."""
        return tuple(f for panel in self.panels for f in panel.families)

    @property
    def chart_families(self) -> Tuple[str, ...]:
        """The families charted over training (one per panel)."""
        return tuple(panel.family for panel in self.panels)


#: every diagnostic, by name, in the order the figures and dashboard sections come
DIAGNOSTICS: Dict[str, Diagnostic] = {}


def register_diagnostic(diagnostic: Diagnostic) -> Diagnostic:
    """Add (or replace) a declaration: its figure and dashboard section appear with it."""
    DIAGNOSTICS[diagnostic.name] = diagnostic
    return diagnostic


def first_layer(family: str) -> int:
    """The first layer (from 1) that has ``family`` (2 for ``gamma``, ``ortho``, ...; else 1)."""
    for diagnostic in DIAGNOSTICS.values():
        for panel in diagnostic.panels:
            if family in panel.families:
                return panel.first_layer
    return 1


register_diagnostic(Diagnostic(
    "alignment",
    panels=(Panel("bp_corr", "Pearson correlation with backprop", "bp_corr", scale="linear"),
            Panel("bp_cos", "cosine similarity with backprop", "bp_cos", scale="linear"),
            Panel("bp_angle", "angle to backprop", "degrees", scale="linear"),
            Panel("bp_norm_ratio", "||update|| / ||backprop||", "bp_norm_ratio")),
    figure="bp_alignment.png", title="alignment of each layer's update with backprop (computed in float64)",
    section="alignment with backprop", logged_by="BPCorrelation, which every shipped config turns on",
    callback="lightning_gait.callbacks.BPCorrelation", latest_bar="bp_corr",
))
register_diagnostic(Diagnostic(
    "targets",
    panels=(Panel("target_norm", "||t - a|| (batch mean)", "target_norm"),
            Panel("gamma", "gamma used (mean, min-max band)", "gamma", scale="log", band=True, first_layer=2),
            Panel("log10_multiplier", "multiplier (mean, min-max band)", "log10 multiplier", scale="linear",
                  band=True)),
    figure="target_norms.png", title="targets", section="targets",
    logged_by="TargetNorms, on in the GAIT-prop and TP configs", callback="lightning_gait.callbacks.TargetNorms",
))
register_diagnostic(Diagnostic(
    "orthogonality",
    panels=(Panel("ortho", "||W W^T - I||_F / sqrt(n)", "ortho", first_layer=2),
            Panel("cond", "condition number of W", "cond", scale="log", first_layer=2)),
    figure="orthogonality.png", title="orthogonality of the square layers", section="orthogonality",
    logged_by="Orthogonality, which every shipped config turns on", callback="lightning_gait.callbacks.Orthogonality",
    extra_lines=(("orthogonality penalty", ("train/ortho_penalty",)),),
))

#: metric families of :func:`alignment_metrics` (one scalar per layer each)
ALIGNMENT_FAMILIES = DIAGNOSTICS["alignment"].families
#: metric families of :func:`target_metrics`
TARGET_FAMILIES = DIAGNOSTICS["targets"].families
#: metric families of :func:`orthogonality_metrics`
ORTHOGONALITY_FAMILIES = DIAGNOSTICS["orthogonality"].families

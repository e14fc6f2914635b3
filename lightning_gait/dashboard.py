"""``python -m lightning_gait.dashboard --entity E --project P``: a W&B workspace for the project.

Builds a workspace with :mod:`wandb_workspaces` and saves it to W&B (the same view is
updated on every call with the same ``--name``). Sections:

* accuracy and loss: train (per step and per epoch), validation, best validation, test,
  learning rate, skipped batches;
* one section per declared diagnostic (:data:`lightning_gait.families.DIAGNOSTICS`): a
  line plot per metric family with every layer on it, plus what the declaration adds.
  Shipped: alignment with backprop (``bp_corr``, ``bp_cos``, ``bp_angle``,
  ``bp_norm_ratio``, and a bar chart of each layer's latest ``bp_corr``); targets (norm,
  gamma, multiplier, with their ranges); orthogonality (drift ``ortho`` and condition
  number ``cond`` per square layer, and the orthogonality penalty);
* speed: epoch time, images per second, epochs done;
* charts logged by the callbacks (closed): the custom charts of each declared
  diagnostic's callback, built from the callback's own chart code.

Runs are grouped by their W&B group, which ``fit`` sets to the regime (the config name,
see :mod:`lightning_gait.wandb_run`). The per-layer keys come from the declarations and
:func:`~lightning_gait.diagnostics.layer_key`, for
``--layers N`` layers (7: the paper's 3072 -> 6 x 500 network) or as many as the network of
``--layers-from CONFIG`` has.

``--dry-run`` writes the specification as JSON (``--out FILE``, else stdout) and needs
neither the network nor an API key: ``sections`` lists every panel with the keys it
shows, ``spec`` is the view exactly as it would be saved.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import socket
import sys
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from .diagnostics import layer_key
from .families import DIAGNOSTICS, Diagnostic, first_layer

__all__ = ["X_AXIS", "CONDITIONAL_KEYS", "build_workspace", "describe", "layer_keys", "main"]

#: the x axis of every line plot: Lightning's WandbLogger makes it the step metric of every key
X_AXIS = "trainer/global_step"
#: keys on the dashboard that a run logs only in some conditions
CONDITIONAL_KEYS = {
    "time/images_per_s_global": "data-parallel runs only (all processes together)",
    "train/skipped_batches": "only when a batch was skipped (on_nonfinite='skip')",
}
#: the regime: fit sets each run's W&B group to it
GROUP_BY = "Group"
DEFAULT_NAME = "lightning-gait"
DEFAULT_LAYERS = 7


def layer_keys(family: str, layers: int) -> List[str]:
    """``family``'s keys for a network of ``layers`` layers (from layer 2 for a family that
    layer 1 lacks, :func:`~lightning_gait.families.first_layer`)."""
    return [layer_key(family, i) for i in range(first_layer(family) - 1, layers)]


def _line(title: str, keys: Sequence[str], **kwargs) -> Tuple[str, dict]:
    return "LinePlot", {"title": title, "x": X_AXIS, "y": list(keys), **kwargs}


def _callback_charts(layers: int) -> List[Tuple[str, dict]]:
    """The custom charts the diagnostic callbacks log, one panel each (as W&B would draw them).

    Each callback's ``chart_payload`` is run on one measurement of every layer, so the chart
    keys, chart types and their settings are the callbacks' own.
    """
    import wandb

    panels = []
    for diagnostic in DIAGNOSTICS.values():
        if not diagnostic.callback:
            continue
        module, _, name = diagnostic.callback.rpartition(".")
        callback = getattr(importlib.import_module(module), name)()
        measured = {key: 0.5 for f in callback.chart_families for key in layer_keys(f, layers)}
        callback.history = [(0, measured), (1, measured)]
        for key, chart in callback.chart_payload(wandb).items():
            chart.set_key(key)
            config = chart.spec.config_value["panel_config"]
            panels.append(("CustomChart", {
                "query": {"summaryTable": {"tableKey": chart.spec.table_key}},
                "chart_name": config["panelDefId"],
                "chart_fields": config["fieldSettings"],
                "chart_strings": config["stringSettings"],
            }))
    return panels


def section_panels(layers: int) -> List[Tuple[str, bool, List[Tuple[str, dict]]]]:
    """``(section name, open, [(panel type, panel arguments)])`` for a ``layers``-layer network."""
    if layers < 2:
        raise ValueError(f"layers must be at least 2, got {layers}")
    # Lightning logs a value logged on_step and on_epoch as KEY_step and KEY_epoch
    accuracy = [
        _line("accuracy", ["train/acc_epoch", "val/acc", "val/acc_best"]),
        _line("loss", ["train/loss_epoch", "val/loss"]),
        _line("train accuracy per step", ["train/acc_step"]),
        _line("train loss per step", ["train/loss_step"]),
        ("ScalarChart", {"title": "best validation accuracy", "metric": "val/acc_best"}),
        ("ScalarChart", {"title": "test accuracy", "metric": "test/acc"}),
        ("ScalarChart", {"title": "test loss", "metric": "test/loss"}),
        _line("learning rate", ["train/lr"]),
        _line("skipped batches (non-finite targets)", ["train/skipped_batches"]),
    ]
    speed = [
        _line("epoch time (s)", ["time/epoch_s"]),
        _line("images per second", ["time/images_per_s", "time/images_per_s_global"]),
        ("ScalarChart", {"title": "epochs done", "metric": "epoch"}),
    ]
    return [
        ("accuracy and loss", True, accuracy),
        *[(d.section, True, diagnostic_panels(d, layers)) for d in DIAGNOSTICS.values()],
        ("speed", True, speed),
        ("charts logged by the callbacks", False, _callback_charts(layers)),
    ]


def diagnostic_panels(diagnostic: Diagnostic, layers: int) -> List[Tuple[str, dict]]:
    """A declared diagnostic's panels: a line plot per family (log y for ``scale="log"``),
    the bar chart of ``latest_bar`` and the ``extra_lines``."""
    panels = [_line(f"{family} per layer", layer_keys(family, layers), log_y=panel.scale == "log" or None)
              for panel in diagnostic.panels for family in panel.families]
    if diagnostic.latest_bar:
        family = diagnostic.latest_bar
        panels.append(("BarPlot", {"title": f"{family} per layer (latest)", "metrics": layer_keys(family, layers),
                                   "orientation": "v"}))
    panels += [_line(title, keys) for title, keys in diagnostic.extra_lines]
    return panels


def panel_keys(kind: str, args: dict) -> List[str]:
    """The logged keys a panel shows (a custom chart: its table's key)."""
    if kind == "LinePlot":
        return list(args["y"])
    if kind == "BarPlot":
        return list(args["metrics"])
    if kind == "ScalarChart":
        return [args["metric"]]
    if kind == "CustomChart":
        return [args["query"]["summaryTable"]["tableKey"]]
    raise ValueError(f"unknown panel type {kind!r}")


def build_workspace(entity: str, project: str, *, name: str = DEFAULT_NAME, layers: int = DEFAULT_LAYERS):
    """The :class:`wandb_workspaces.workspaces.Workspace` (not saved)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=title, is_open=is_open, panels=[getattr(wr, kind)(**args) for kind, args in panels],
                   panel_settings=ws.SectionPanelSettings(x_axis=X_AXIS))
        for title, is_open, panels in section_panels(layers)
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=X_AXIS, max_runs=100),
        runset_settings=ws.RunsetSettings(
            groupby=[ws.Metric(GROUP_BY)],
            pinned_columns=["summary:val/acc_best", "summary:test/acc", "config:lightning_gait.version"],
        ),
    )


def view_name(name: str) -> str:
    """The view's internal name, fixed by ``name``, so that saving again updates the same view."""
    return f"nw-{hashlib.sha1(name.encode()).hexdigest()[:11]}-v"


def describe(workspace, layers: int) -> Dict[str, object]:
    """The JSON specification: panels with their keys, and the view as it would be saved."""
    sections = [
        {"name": title, "open": is_open,
         "panels": [{"type": kind, "title": args.get("title") or args.get("chart_strings", {}).get("title"),
                     "x": args.get("x"), "keys": panel_keys(kind, args)} for kind, args in panels]}
        for title, is_open, panels in section_panels(layers)
    ]
    view = workspace._to_model()
    return {
        "entity": workspace.entity,
        "project": workspace.project,
        "name": workspace.name,
        "view_name": view_name(workspace.name),
        "layers": layers,
        "group_by": GROUP_BY,
        "x_axis": X_AXIS,
        "conditional_keys": CONDITIONAL_KEYS,
        "sections": sections,
        "spec": json.loads(view.spec.model_dump_json(by_alias=True, exclude_none=True)),
    }


def layers_of(config: str) -> int:
    """The number of layers of the network that config ``config`` builds (through fit's parser)."""
    from .fit import _build_cli

    cli = _build_cli(["--config", config, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                      "--trainer.callbacks", "[]"])
    return int(cli.model.net.num_layers)


def _unreachable(timeout_s: float = 5.0) -> Optional[str]:
    """Why the W&B server cannot be reached (None when a connection opens)."""
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    url = urlparse(base)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        return f"cannot reach the W&B server {base} ({err.__class__.__name__}: {err})"
    return None


def save(workspace) -> str:
    """Create the view, or update it when one of the same name exists; returns its URL."""
    from wandb_workspaces.workspaces import internal

    name = view_name(workspace.name)
    try:
        existing = internal.View.from_name(workspace.entity, workspace.project, name).id
    except ValueError:  # no such view (or project) yet
        existing = ""
    object.__setattr__(workspace, "_internal_name", name)
    object.__setattr__(workspace, "_internal_id", existing)
    workspace.save()
    return workspace.url


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_gait.dashboard",
        description="Create or update the lightning-gait W&B workspace of a project.")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"),
                        help="W&B user or team (default: $WANDB_ENTITY)")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "lightning-gait"),
                        help="W&B project (default: $WANDB_PROJECT, else lightning-gait, as conf/base.yaml)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="the workspace's name (one view per name)")
    layers = parser.add_mutually_exclusive_group()
    layers.add_argument("--layers", type=int, default=None,
                        help=f"layers of the network (default {DEFAULT_LAYERS}: 3072 -> 6 x 500 -> output)")
    layers.add_argument("--layers-from", metavar="CONFIG", help="take the layer count from a config's network")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the specification as JSON instead of saving (no network, no API key)")
    parser.add_argument("--out", help="with --dry-run: the JSON file (default: stdout)")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 1

    try:
        n_layers = layers_of(args.layers_from) if args.layers_from else (args.layers or DEFAULT_LAYERS)
        workspace = build_workspace(args.entity or "ENTITY", args.project, name=args.name, layers=n_layers)
    except Exception as err:  # a bad config or layer count: say which
        return fail(str(err))
    if args.dry_run:
        text = json.dumps(describe(workspace, n_layers), indent=2)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        else:
            print(text)
        return 0

    from .fit import wandb_credentials_present

    if not args.entity:
        return fail("no W&B entity: pass --entity (or set WANDB_ENTITY); nothing saved")
    if not wandb_credentials_present():
        return fail("no W&B API key (set WANDB_API_KEY or run `wandb login`); nothing saved "
                    "(--dry-run writes the specification)")
    reason = _unreachable()
    if reason:
        return fail(f"{reason}; nothing saved (--dry-run writes the specification)")
    try:
        url = save(workspace)
    except Exception as err:  # the server refused (permissions, project, API): one line
        return fail(f"saving the workspace failed: {err.__class__.__name__}: {str(err).splitlines()[0][:300]}")
    print(f"workspace saved: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

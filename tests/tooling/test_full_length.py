"""The 200-epoch summary: one row per run and finished epoch, resumed rows counted once,
the gap at the last common epoch; a missing overlay is one line."""
from __future__ import annotations

import csv

from experiments import full_length

HEADER = ["epoch", "step", "val/acc", "test/acc", "train/loss_step"]


def _write(path, rows):
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)


def test_summary_and_gap(tmp_path, capsys):
    _write(tmp_path / "bp+f32_s0" / "metrics.csv",
           [[0, 9, 0.30, 0.31, ""], [0, 5, "", "", 2.0], [1, 19, 0.40, 0.41, ""], [2, 29, 0.45, 0.46, ""]])
    # epoch 1 logged twice (an interruption, then the resume): the later row wins
    _write(tmp_path / "gait_norm+f32+difference_s0" / "metrics.csv",
           [[0, 9, 0.28, 0.29, ""], [1, 19, 0.35, 0.36, ""], [1, 19, 0.37, 0.38, ""]])
    assert full_length.main(["--results", str(tmp_path), "--overlay"]) == 0
    out = capsys.readouterr().out
    assert "bp+f32 seed(s) [0]: 3 of 200 epochs" in out
    assert "epoch 2: BP 41.00%, GAIT-N 38.00% test accuracy; gap +3.00 points" in out
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"regime", "epoch", "test_acc"} <= set(rows[0])
    assert [(r["regime"], r["epoch"]) for r in rows] == [("bp", "1"), ("bp", "2"), ("bp", "3"),
                                                         ("gait_norm", "1"), ("gait_norm", "2")]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert full_length.main(["--results", str(tmp_path), "--overlay", f"bp={tmp_path / 'nope.csv'}"]) == 2
    assert "overlay curve not found" in capsys.readouterr().err

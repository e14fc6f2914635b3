"""Read the logged history of an offline W&B run from its ``run-*.wandb`` file, without W&B's servers.

An offline run (``WANDB_MODE=offline``) keeps everything it logged in
``wandb/offline-run-<time>-<id>/run-<id>.wandb``. The layout (checked against files
written by wandb 0.31, see ``tests/test_wandb_offline.py``) is a LevelDB-style log:

* a 7-byte file header: the magic ``b":W&B"``, the 2-byte little-endian identifier
  ``0xBEE1`` and a 1-byte version (0);
* then blocks of 32 KiB, counted from the start of the file (the header sits in the
  first block). Each block holds pieces, each with a 7-byte header: CRC-32 (4 bytes,
  little-endian, ``zlib.crc32`` of the type byte followed by the data), data length
  (2 bytes, little-endian) and type (1 byte: 1 full, 2 first, 3 middle, 4 last). A
  record too long for the rest of its block is cut into first / middle... / last
  pieces; fewer than 7 bytes left at a block's end are zero padding;
* each reassembled record is a protobuf ``Record`` of
  ``wandb.proto.wandb_internal_pb2``. ``record.history.item`` holds one logged row:
  each item has ``key`` (older writers) or ``nested_key`` (a path, joined here with
  ``"."``; a key such as ``"bp_corr/layer_1"`` is one element) and ``value_json``.

``python -m lightning_gait.wandb_history RUN`` prints what the run logged, one line per
metric family (``bp_corr/layer_1..7  9 rows each``), W&B tables (the ``charts/*`` data behind
the custom charts) by name only and W&B's own keys on one line; ``--all`` lists every key,
the tables' fields included.
"""
from __future__ import annotations

import glob
import json
import re
import struct
import sys
import warnings
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

__all__ = [
    "WandbFileError",
    "find_run_file",
    "iter_records",
    "read_history",
    "history_keys",
    "is_complete",
    "wait_until_complete",
    "summarize_keys",
]

FILE_MAGIC = b":W&B"
FILE_IDENT = 0xBEE1
HEADER_SIZE = 7  # file header and piece header alike
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A ``.wandb`` file that is not one, or whose content is corrupt."""


def find_run_file(path: Union[str, Path]) -> Path:
    """The ``run-*.wandb`` file of ``path``.

    ``path`` may be the file itself, a run folder (``offline-run-...`` or ``latest-run``),
    a ``wandb`` folder or a folder holding one (then the newest run is taken).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    direct = sorted(path.glob("run-*.wandb"))
    if direct:
        return direct[-1]
    candidates = [Path(p) for pattern in ("*run-*/run-*.wandb", "wandb/*run-*/run-*.wandb", "**/run-*.wandb")
                  for p in glob.glob(str(path / pattern), recursive=True)]
    candidates = [p for p in candidates if "latest-run" not in p.parts]
    if not candidates:
        raise FileNotFoundError(f"no run-*.wandb file under {path}")
    return max(candidates, key=lambda p: (p.parent.name.split("-", 2)[-1], p.stat().st_mtime))


def _pieces(data: bytes, path: Path) -> Iterator[tuple]:
    """``(type, payload)`` of every piece, checking each CRC; stops at a truncated tail."""
    pos = HEADER_SIZE
    size = len(data)
    while pos < size:
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + HEADER_SIZE > size:
            warnings.warn(f"{path}: truncated piece header at byte {pos}; stopping there", RuntimeWarning)
            return
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if crc == 0 and length == 0 and kind == 0:
            pos += left_in_block  # a zero-filled rest of the block (preallocated file)
            continue
        start = pos + HEADER_SIZE
        end = start + length
        if end > size:
            warnings.warn(f"{path}: truncated record at byte {pos} (the run may still be writing)", RuntimeWarning)
            return
        if length > left_in_block - HEADER_SIZE:
            raise WandbFileError(f"{path}: piece at byte {pos} is longer than its block")
        payload = data[start:end]
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            raise WandbFileError(f"{path}: CRC mismatch in the piece at byte {pos}")
        yield kind, payload
        pos = end


def iter_records(path: Union[str, Path]):
    """Every protobuf ``Record`` of a ``.wandb`` file (or run folder), in order."""
    from wandb.proto import wandb_internal_pb2

    path = find_run_file(path)
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:
        raise WandbFileError(f"{path}: too short to be a .wandb file ({len(data)} bytes)")
    magic, ident, version = struct.unpack_from("<4sHB", data, 0)
    if magic != FILE_MAGIC or ident != FILE_IDENT:
        raise WandbFileError(f"{path}: not a .wandb file (header {data[:HEADER_SIZE]!r})")
    if version != 0:
        raise WandbFileError(f"{path}: unknown .wandb format version {version} (this reader knows 0)")
    buffer: Optional[bytearray] = None
    for kind, payload in _pieces(data, path):
        if kind == FULL:
            if buffer is not None:
                raise WandbFileError(f"{path}: a full record inside an unfinished multi-piece record")
            whole = bytes(payload)
        elif kind == FIRST:
            if buffer is not None:
                raise WandbFileError(f"{path}: a first piece inside an unfinished multi-piece record")
            buffer = bytearray(payload)
            continue
        elif kind == MIDDLE:
            if buffer is None:
                raise WandbFileError(f"{path}: a middle piece without a first")
            buffer += payload
            continue
        elif kind == LAST:
            if buffer is None:
                raise WandbFileError(f"{path}: a last piece without a first")
            whole = bytes(buffer + payload)
            buffer = None
        else:
            raise WandbFileError(f"{path}: unknown piece type {kind}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(whole)
        yield record


def _item_key(item) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def read_history(path: Union[str, Path]) -> List[Dict[str, object]]:
    """The run's logged rows, in order: one ``{key: value}`` dict per ``wandb.log`` call.

    Values are decoded from JSON (``NaN`` and ``Infinity`` become floats; a table or chart
    reference becomes the dict of its fields under ``key.field`` names). Keys include
    W&B's own ``_step``, ``_runtime`` and ``_timestamp``.
    """
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: Dict[str, object] = {}
        for item in record.history.item:
            row[_item_key(item)] = json.loads(item.value_json)
        if "_step" not in row and record.history.HasField("step"):
            row["_step"] = record.history.step.num
        rows.append(row)
    return rows


def is_complete(path: Union[str, Path]) -> bool:
    """True when the run file ends with W&B's ``exit`` record (the run finished writing).

    ``run.finish()`` can return while W&B's writer is still flushing the file; read a run
    that was just finished after :func:`wait_until_complete`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tail still being written
        last = None
        for record in iter_records(path):
            last = record.WhichOneof("record_type")
    return last == "exit"


def wait_until_complete(path: Union[str, Path], *, timeout_s: float = 60.0, poll_s: float = 0.2) -> bool:
    """Poll :func:`is_complete` for up to ``timeout_s`` seconds; return whether it became complete."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if is_complete(path):
                return True
        except (FileNotFoundError, WandbFileError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def history_keys(rows: List[Dict[str, object]]) -> List[str]:
    """Every key that appears in some row, sorted."""
    return sorted({key for row in rows for key in row})


_LAYER_KEY = re.compile(r"^(?P<family>.+)/layer_(?P<k>\d+)$")


def _rows_text(counts: List[int]) -> str:
    low, high = min(counts), max(counts)
    if low == high:
        return f"{low} row" + ("" if low == 1 else "s")
    return f"{low}-{high} rows"


def summarize_keys(rows: List[Dict[str, object]]) -> List[str]:
    """One line per logged metric, per-layer families on one line each, tables and W&B's keys folded."""
    counts: Dict[str, int] = {}
    for row in rows:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    tables = sorted(key[: -len("._type")] for key in counts if key.endswith("._type"))
    in_table = {key for key in counts for table in tables if key.startswith(table + ".")}
    own = sorted(key for key in counts if key.startswith("_"))
    families: Dict[str, Dict[int, int]] = {}
    single: Dict[str, int] = {}
    for key, n in counts.items():
        if key in in_table or key in own:
            continue
        m = _LAYER_KEY.match(key)
        if m:
            families.setdefault(m.group("family"), {})[int(m.group("k"))] = n
        else:
            single[key] = n
    entries = []
    for family, layers in families.items():
        ks = sorted(layers)
        span = f"{ks[0]}..{ks[-1]}" if ks == list(range(ks[0], ks[-1] + 1)) else ",".join(map(str, ks))
        rows_text = _rows_text(list(layers.values())) + (" each" if len(ks) > 1 else "")
        entries.append((f"{family}/layer_{span}" if len(ks) > 1 else f"{family}/layer_{ks[0]}", rows_text))
    entries += [(key, _rows_text([n])) for key, n in single.items()]
    entries.sort()
    width = max((len(name) for name, _ in entries), default=0)
    lines = [f"  {name:<{width}}  {count}" for name, count in entries]
    if tables:
        lines.append(f"  W&B tables ({len(tables)}, for the custom charts): " + ", ".join(tables))
    if own:
        lines.append("  W&B's own: " + ", ".join(own))
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lightning_gait.wandb_history",
                                     description="What an offline W&B run logged, read from its .wandb file.")
    parser.add_argument("run", help="a run-*.wandb file, its offline-run-* folder, or a folder holding runs")
    parser.add_argument("--all", action="store_true", help="list every key, the W&B tables' fields included")
    args = parser.parse_args(argv)
    try:
        path = find_run_file(args.run)
        rows = read_history(path)
    except (FileNotFoundError, WandbFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{path}: {len(rows)} history rows")
    lines = [f"  {key}" for key in history_keys(rows)] if args.all else summarize_keys(rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Read W&B runs: offline run directories (no network, no account) or the W&B API.

An offline run directory holds `run-<id>.wandb`, a LevelDB-style log of protobuf `Record`s:
a 7-byte file header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a
7-byte header (crc32, length, type FULL/FIRST/MIDDLE/LAST). We decode the records ourselves
with wandb's own protobuf classes, so comparing runs never needs `wandb sync` or a key.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
MAGIC = (b":W&B", 0xBEE1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RunReadError(ValueError):
    """A run that cannot be read; the message names the path."""


@dataclass
class RunData:
    name: str
    run_id: str
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    source: str = ""

    def series(self, key: str, x_key: str = "_step") -> tuple[list[float], list[float]]:
        """(x, y) of every history row that has `key`, in logging order."""
        xs, ys = [], []
        for i, row in enumerate(self.history):
            if key in row and isinstance(row[key], (int, float)):
                xs.append(row.get(x_key, i))
                ys.append(float(row[key]))
        return xs, ys

    def metric_keys(self) -> list[str]:
        keys = {k for row in self.history for k, v in row.items()
                if not k.startswith("_") and isinstance(v, (int, float))}
        return sorted(keys)


def _chunks(data: bytes, path: Path):
    pos = FILE_HEADER.size
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:  # the writer pads block tails shorter than a header
            pos += left_in_block
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if kind == 0 and length == 0:
            break
        if pos + length > len(data):
            raise RunReadError(f"{path}: truncated record at byte {pos}")
        yield kind, data[pos:pos + length]
        pos += length


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < FILE_HEADER.size:
        raise RunReadError(f"{path}: not a W&B run file (too short)")
    ident, magic, _version = FILE_HEADER.unpack_from(data)
    if (ident, magic) != MAGIC:
        raise RunReadError(f"{path}: not a W&B run file (bad header)")
    pending = b""
    for kind, chunk in _chunks(data, path):
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending + chunk if kind == LAST else chunk)
            pending = b""
            yield record
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: str | Path) -> RunData:
    """Decode one `offline-run-*` (or synced `run-*`) directory."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise RunReadError(f"{run_dir}: no run-*.wandb file (is this a W&B run directory?)")
    run = RunData(name=run_dir.name, run_id=files[0].stem.removeprefix("run-"), source=str(run_dir))
    for record in _records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id = r.run_id or run.run_id
            run.name = r.display_name or run.name
            run.group = r.run_group
            run.tags = list(r.tags)
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                key = _key(item)
                if not key.startswith("_"):
                    run.summary[key] = json.loads(item.value_json)
    run.config.pop("_wandb", None)
    return run


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every W&B run directory under `root` (itself included), sorted by name."""
    root = Path(root)
    if list(root.glob("run-*.wandb")):
        return [root]
    return sorted({p.parent for p in root.rglob("run-*.wandb") if p.parent.name != "latest-run"
                   and not p.parent.is_symlink()})


def read_api_run(path: str) -> RunData:
    """`entity/project/run_id` through the W&B API; the key comes from WANDB_API_KEY only."""
    if not os.environ.get("WANDB_API_KEY"):
        raise RunReadError(f"{path}: reading runs from the W&B API needs WANDB_API_KEY in the environment")
    import wandb

    api_run = wandb.Api().run(path)
    history = [dict(row) for row in api_run.scan_history()]
    return RunData(name=api_run.name, run_id=api_run.id, group=api_run.group or "",
                   tags=list(api_run.tags), config=dict(api_run.config), history=history,
                   summary={k: v for k, v in api_run.summary.items() if not k.startswith("_")},
                   source=path)


def load_runs(specs: list[str]) -> list[RunData]:
    """Local paths (run dirs or folders holding them) or `entity/project/run_id` API paths."""
    runs = []
    for spec in specs:
        if Path(spec).exists():
            dirs = find_run_dirs(spec)
            if not dirs:
                raise RunReadError(f"{spec}: no W&B runs found under this path")
            runs.extend(read_offline_run(d) for d in dirs)
        elif spec.count("/") == 2:
            runs.append(read_api_run(spec))
        else:
            raise RunReadError(f"{spec}: neither a local path nor an entity/project/run_id")
    return runs

"""Checkpoints (resume) and exports (consolidated weights for downstream stages).

A checkpoint directory `<storage_path>/<name>/checkpoint_<step>/` holds
  ds/...                DeepSpeed's own files (module, optimizer partitions per rank, scheduler),
                        used only to resume with the same world size and ZeRO stage
  train_state.json      step, data position (epoch, batch in epoch), world size, residues seen
  model.safetensors     consolidated fp32 weights (gathered from ZeRO partitions when needed)
  config.json           export config (kind, model, git commit, train ...), see docs/contracts.md
  + the task's export files (tokenizer.json)
so an export is a copy of the last three files: it never needs ZeRO shards or the world size.
Under Ray, checkpoints go through `ray.train.report(checkpoint=...)`; in a plain process the
engine writes the same layout itself. Either way `latest_checkpoint(run_dir)` finds the newest.
`export` also reads runs in object storage (`s3://bucket/runs/name?endpoint_override=...`, any
URI `pyarrow.fs.FileSystem.from_uri` takes; credentials come from the environment, as for Ray).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import torch

from .errors import UserError

EXPORT_FILES = ("model.safetensors", "config.json")
STATE_FILE = "train_state.json"
DS_DIR = "ds"
DS_TAG = "state"


class CheckpointError(UserError, ValueError):
    """No usable checkpoint / export where one was expected (message names the path)."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def consolidated_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of a DeepSpeed engine's module. Collective: call on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module if hasattr(engine, "module") else engine
    full_by_id = {}
    for _, p in module.named_parameters():
        fp32 = safe_get_full_fp32_param(p)  # all-reduces the ZeRO 1/2 fp32 partitions
        full_by_id[id(p)] = (fp32 if fp32 is not None else p.detach()).float().cpu()
    out = {}
    for key, value in module.state_dict(keep_vars=True).items():
        tensor = full_by_id.get(id(value))
        if tensor is None:
            tensor = value.detach().cpu()
            tensor = tensor.float() if tensor.is_floating_point() else tensor
        out[key] = tensor.clone().contiguous()  # clone: tied weights must not share storage
    return out


def save_checkpoint(engine, directory: Path, *, state: dict, export_config: dict, task, rank: int,
                    weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write one checkpoint into `directory` (each rank its DeepSpeed part; rank 0 the rest).
    `weights` replaces the current model as the export (a run that selects exports its best model;
    resuming uses DeepSpeed's files, never the export)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(directory / DS_DIR), tag=DS_TAG)
    if weights is None:
        weights = consolidated_state_dict(engine)
    if rank == 0:
        save_file(weights, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(export_config, indent=2) + "\n")
        task.write_export_files(directory)
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_checkpoint(engine, directory: Path, *, world_size: int, zero_stage: int) -> dict:
    """Restore model, optimizer and scheduler into `engine`; returns the saved train state."""
    directory = Path(directory)
    state_file = directory / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint (no {STATE_FILE})")
    state = json.loads(state_file.read_text())
    if state.get("world_size") != world_size or state.get("zero_stage") != zero_stage:
        raise CheckpointError(
            f"{directory}: written with {state.get('world_size')} workers and ZeRO {state.get('zero_stage')}; "
            f"resuming needs the same (now {world_size} and {zero_stage}); start a new run name "
            f"and initialise from its export instead")
    path, _ = engine.load_checkpoint(str(directory / DS_DIR), tag=DS_TAG)
    if path is None:
        raise CheckpointError(f"{directory / DS_DIR}: DeepSpeed found no checkpoint to load")
    return state


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest complete checkpoint under a run directory (by step), or None."""
    found = []
    for d in Path(run_dir).glob("checkpoint_*"):
        state = d / STATE_FILE
        if state.is_file() and (d / "model.safetensors").is_file():
            found.append((json.loads(state.read_text())["step"], d))
    return max(found)[1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints of a plain (non-Ray) run."""
    dirs = sorted(Path(run_dir).glob("checkpoint_*"))
    for d in dirs[:-keep] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join_path(base: str | Path, *parts: str) -> str:
    """`base/part/...` for a local path or a URI; a URI's query stays at its end
    (`s3://b/runs?endpoint_override=...` + `name` -> `s3://b/runs/name?endpoint_override=...`)."""
    if not is_uri(base):
        return str(Path(base, *parts))
    root, sep, query = str(base).partition("?")
    return root.rstrip("/") + "".join("/" + p.strip("/") for p in parts) + sep + query


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory whose latest checkpoint is meant (local paths;
    `export` reads object storage)."""
    if is_uri(path):
        raise CheckpointError(f"{path}: a URI; export the run first (python -m pretrain export --run URI --out DIR) "
                              f"and use the export directory")
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoint found (expected {path}/checkpoint_*/{STATE_FILE})")
    return latest


def export(run_or_checkpoint: str | Path, out: str | Path) -> Path:
    """Copy consolidated weights, config.json and the task's files of the latest checkpoint to `out`.
    `run_or_checkpoint` is a local directory or an object-store URI of a run or one checkpoint."""
    out = Path(out)
    if is_uri(run_or_checkpoint):
        src = _export_remote(str(run_or_checkpoint), out)
    else:
        src = resolve_checkpoint(run_or_checkpoint)
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.name != STATE_FILE:
                shutil.copy2(f, out / f.name)
    for name in EXPORT_FILES:
        if not (out / name).is_file():
            raise CheckpointError(f"{src}: checkpoint lacks {name}")
    return out


def _export_remote(uri: str, out: Path) -> str:
    """`export` from object storage: find the newest checkpoint through pyarrow.fs and download
    its top-level files (not DeepSpeed's `ds/`). Returns the checkpoint's URI."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise CheckpointError(f"{uri}: cannot open ({err})") from None
    path = path.rstrip("/")
    try:
        ckpt = path if _is_file(fs, f"{path}/{STATE_FILE}") else _latest_remote(fs, path)
        if ckpt is None:
            raise CheckpointError(f"{uri}: no checkpoint found (expected checkpoint_*/{STATE_FILE} under it)")
        src = uri if ckpt == path else join_path(uri, PurePosixPath(ckpt).name)
        out.mkdir(parents=True, exist_ok=True)
        for info in fs.get_file_info(pafs.FileSelector(ckpt)):
            if info.type == pafs.FileType.File and info.base_name != STATE_FILE:
                with fs.open_input_stream(info.path) as fin, open(out / info.base_name, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
    except OSError as err:  # network, permissions, missing bucket: one line naming the URI
        raise CheckpointError(f"{uri}: {err}") from None
    return src


def _is_file(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type == pafs.FileType.File


def _latest_remote(fs, run_path: str) -> str | None:
    """Newest complete checkpoint (by the step in its train state) under a run on `fs`, or None."""
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        state, model = f"{info.path}/{STATE_FILE}", f"{info.path}/model.safetensors"
        if _is_file(fs, state) and _is_file(fs, model):
            with fs.open_input_stream(state) as fh:
                found.append((json.loads(fh.read())["step"], info.path))
    return max(found)[1] if found else None


def load_export(directory: str | Path, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, fp32 state dict) of an export; safetensors only, no pickle. The one export
    loader of the project: `kind` (config.json "kind", e.g. "bilstm", "encoder") is checked when given."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in EXPORT_FILES:
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not an exported model (missing {name})")
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{directory / 'config.json'}: not valid JSON ({err})") from None
    if kind is not None and config.get("kind") != kind:
        raise CheckpointError(f"{directory / 'config.json'}: kind is {config.get('kind')!r}, expected {kind!r}")
    return config, load_file(str(directory / "model.safetensors"))

"""Load any embedder: `onehot`, or an exported model directory (dispatch on config.json "kind")."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from data_prep.vocab import vocab_hash

from .errors import FinetuneError
from .onehot import OneHotEmbedder

# Exported-model kind -> the stage whose embed.py loads it (docs/contracts.md "Exported model").
STAGE_OF_KIND = {"bilstm": "pretrain", "encoder": "multitask"}


def load_embedder(model: str, device: str = "cpu"):
    """`model` is "onehot" or an export dir holding config.json, model.safetensors, tokenizer.json."""
    if model == "onehot":
        return OneHotEmbedder(device)
    export = Path(model)
    config_path = export / "config.json"
    if not config_path.is_file():
        raise FinetuneError(f"{config_path}: missing (--model takes 'onehot' or an exported model dir)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise FinetuneError(f"{config_path}: not valid JSON ({err})") from None
    kind = config.get("kind")
    if kind not in STAGE_OF_KIND:
        raise FinetuneError(f"{config_path}: key kind={kind!r} is not one of {sorted(STAGE_OF_KIND)}")
    if config.get("vocab_hash") not in (None, vocab_hash()):
        raise FinetuneError(f"{config_path}: key vocab_hash={config['vocab_hash']} differs from this "
                            f"project's vocabulary ({vocab_hash()})")
    stage = STAGE_OF_KIND[kind]
    try:
        module = importlib.import_module(f"{stage}.embed")
    except ModuleNotFoundError as err:
        raise FinetuneError(f"{config_path}: kind {kind} needs {stage}/embed.py ({err})") from None
    # the stage's loader (engine.checkpoint.load_export, strict) raises UserErrors naming the file;
    # anything else it raises is a bug and keeps its traceback
    return module.load_embedder(str(export), device=device)


def describe(model: str) -> str:
    """Short name of an embedder for tables: onehot, or the export dir's name."""
    return "onehot" if model == "onehot" else Path(model).name

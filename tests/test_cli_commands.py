"""Documented commands run as written, overrides stack, DeepSpeed JSON configs merge by one rule.

Every `python -m <stage> ...` command in the README's code blocks, cluster.yaml's comments, the
KubeRay RayJob's entrypoint and the SLURM script's example is run through its CLI with `--dry-run`
(config and every override loaded, nothing trained)."""
from __future__ import annotations

import importlib
import json
import re
import shlex

import pytest
import yaml

from conftest import REPO
from engine.config import ConfigError, deepspeed_settings
from pretrain import config as pretrain_config
from pretrain.config import CONFIG_DIR

STAGES = ("data_prep", "pretrain", "multitask", "finetune")


def documented_commands() -> list[list[str]]:
    """argv of each `python -m <stage>` command in README code blocks and cluster.yaml comments."""
    texts = re.findall(r"```(?:bash|sh)?\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    texts.append("\n".join(line.lstrip("#") for line in (REPO / "cluster.yaml").read_text().splitlines()
                           if line.startswith("#")))
    texts.append(yaml.safe_load((REPO / "ops/k8s/rayjob.yaml").read_text())["spec"]["entrypoint"])
    sbatch = (REPO / "ops/slurm/protlm.sbatch").read_text().splitlines()
    texts.append("\n".join(line.lstrip("#") for line in sbatch if line.startswith("#   ") or line.startswith("#       ")))
    commands = []
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            if "python -m" not in line:
                continue
            words = shlex.split(line, comments=True)
            for i in range(len(words) - 2):
                if words[i] == "python" and words[i + 1] == "-m" and words[i + 2] in STAGES:
                    commands.append(words[i + 2:])
    return commands


def test_every_documented_stage_command_runs_as_written(capsys):
    commands = documented_commands()
    assert len(commands) >= 5  # README's dry run and submit, cluster.yaml's, the RayJob's, the sbatch example
    for stage, *argv in commands:
        main = importlib.import_module(f"{stage}.__main__").main
        flags = argv if "--dry-run" in argv else argv + ["--dry-run"]
        code = main(flags)
        out, err = capsys.readouterr()
        assert code == 0, f"python -m {stage} {' '.join(argv)}: {err}"
        resolved = yaml.safe_load(out.split("# DeepSpeed config")[0])
        for override in (a for a in argv if "=" in a and not a.startswith("-")):
            key, value = override.split("=", 1)
            node = resolved
            for part in key.split("."):
                node = node[part]
            assert node == yaml.safe_load(value), (stage, override)  # every override took effect


def test_set_repeats_and_the_error_names_the_bad_key(capsys):
    from pretrain.__main__ import main

    demo = str(CONFIG_DIR / "demo.yaml")
    assert main(["train", "--config", demo, "--set", "optim.lr=1e-2", "--set", "ray.num_workers=3", "train.seed=7",
                 "--dry-run"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out.split("# DeepSpeed")[0])
    assert (resolved["optim"]["lr"], resolved["ray"]["num_workers"], resolved["train"]["seed"]) == (0.01, 3, 7)
    assert main(["train", "--config", demo, "--set", "ray.num_workers=2", "--set", "train.storage_path=x",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.storage_path: unknown key" in err


def test_deepspeed_json_merges_over_the_yaml_and_may_not_contradict_it(tmp_path):
    offload = REPO / "configs/deepspeed/zero2_offload.json"
    cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"deepspeed.config={offload}", "deepspeed.zero_stage=2",
                                                          "deepspeed.extra={zero_optimization: {reduce_bucket_size: 5}}"])
    ds = deepspeed_settings(cfg.deepspeed, False)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"  # deep merge keeps both
    assert zero["reduce_bucket_size"] == 5 and zero["allgather_bucket_size"] == 200000000  # extra last
    assert ds["gradient_accumulation_steps"] == cfg.deepspeed.grad_accum_steps
    with pytest.raises(ConfigError, match=r"zero_optimization.stage = 2 contradicts deepspeed.zero_stage = 1"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"deepspeed.config={offload}", "deepspeed.zero_stage=1"])
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 64}))
    with pytest.raises(ConfigError, match=f"{bad}: train_batch_size: batches are residue-budgeted"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"deepspeed.config={bad}"])
    bad.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(ConfigError, match=f"{bad}: line 1: invalid JSON"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"deepspeed.config={bad}"])
    bad.write_text(json.dumps({"gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"}}))
    assert pretrain_config.load(CONFIG_DIR / "demo.yaml", [f"deepspeed.config={bad}"])  # "auto" defers to the YAML
    with pytest.raises(ConfigError, match=r"deepspeed.zero_stage: must be 0, 1 or 2 \(ZeRO-3 partitions"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", ["deepspeed.zero_stage=3"])


def test_zero2_offload_config_trains(shared_data, tmp_path):
    from _pretrain_shards import build_shards
    from engine.checkpoint import latest_checkpoint, load_export
    from engine.loop import run_plain
    from pretrain.task import BiLSTMTask

    shards = build_shards(shared_data, tmp_path / "shards", n_pssm=20, n_plain=40)
    cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", [
        "model.hidden=64", "model.proj=32", "model.input_proj=32", f"data.train={shards}",
        f"ray.storage_path={tmp_path}", "ray.name=offload", "deepspeed.zero_stage=2",
        "deepspeed.config=configs/deepspeed/zero2_offload.json", "train.max_steps=4", "train.log_every=2",
        "wandb.mode=disabled"])
    out = run_plain(BiLSTMTask, cfg)
    assert out["step"] == 4 and out["ce"] > 0
    config, weights = load_export(latest_checkpoint(tmp_path / "offload"))
    assert config["kind"] == "bilstm" and weights


def test_resume_from_object_storage_loads_a_local_copy(tmp_path, monkeypatch):
    """Under Ray Train with s3:// (or gs://) storage the checkpoint is not a local path: the worker
    downloads it. A pyarrow SubTreeFileSystem stands in for the bucket (same code path: not local)."""
    import pyarrow.fs as pafs
    import ray.train
    import torch

    from engine import loop

    stored = tmp_path / "bucket" / "run" / "checkpoint_00000006"
    stored.mkdir(parents=True)
    (stored / "train_state.json").write_text('{"step": 6}')
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    monkeypatch.setattr(ray.train, "get_checkpoint",
                        lambda: ray.train.Checkpoint("run/checkpoint_00000006", filesystem=bucket))
    local = loop._resume_dir(loop.WorkerContext(0, 1, 0, torch.device("cpu"), under_ray=True), tmp_path / "run")
    assert local.resolve() != stored.resolve() and json.loads((local / "train_state.json").read_text()) == {"step": 6}

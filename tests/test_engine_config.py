"""engine.config strictness and every shipped pretrain YAML."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, ExperimentConfig, load_config, to_dict
from pretrain import config as pretrain_config
from pretrain.config import CONFIG_DIR, PretrainConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_dotted_key_and_file(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n  lrr: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(ExperimentConfig, path)
    assert str(path) in str(err.value) and "optim.lrr: unknown key" in str(err.value)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"modle: unknown key"):
        pretrain_config.load(write(tmp_path, "modle:\n  hidden: 3\n"))


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: fast\n", "optim.lr: expected a number"),
    ("ray:\n  use_gpu: 1\n", "ray.use_gpu: expected true/false"),
    ("train:\n  max_steps: 2.5\n", "train.max_steps: expected an integer"),
    ("data:\n  long_proteins: drop\n", "data.long_proteins: must be one of window, crop"),
    ("wandb:\n  tags: demo\n", "wandb.tags: expected a list"),
    ("deepspeed:\n  zero_stage: 3\n", "deepspeed.zero_stage: must be 0, 1 or 2"),
    ("data:\n  max_length: 9000\n  residues_per_batch: 100\n", "data.residues_per_batch: must be >="),
    ("model:\n  hidden: 64\n  proj: 64\n", "model.proj: must be smaller"),
    ("optim: [1, 2]\n", "optim: expected a mapping"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        pretrain_config.load(write(tmp_path, text))


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(ExperimentConfig, write(tmp_path, "optim:\n  lr: a: b\n"))


def test_overrides_are_typed_and_strict(tmp_path):
    cfg = pretrain_config.load(CONFIG_DIR / "demo.yaml", ["optim.lr=0.5", "model.shared_directions=false",
                                                          "wandb.tags=[a, b]"])
    assert cfg.optim.lr == 0.5 and cfg.model.shared_directions is False and cfg.wandb.tags == ["a", "b"]
    with pytest.raises(ConfigError, match=r"optim\.nope: unknown key"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", ["optim.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        pretrain_config.load(CONFIG_DIR / "demo.yaml", ["optim.lr"])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    cfg = pretrain_config.load(path)
    assert isinstance(cfg, PretrainConfig)
    assert to_dict(cfg)["model"]["hidden"] == cfg.model.hidden


def test_presets_have_the_paper_sizes():
    pevolm = pretrain_config.load(CONFIG_DIR / "pevolm.yaml").model
    seqvec = pretrain_config.load(CONFIG_DIR / "seqvec.yaml").model
    assert (pevolm.hidden, pevolm.proj, pevolm.shared_directions) == (2048, 256, True)
    assert (seqvec.hidden, seqvec.proj, seqvec.shared_directions) == (4096, 512, False)
    assert {p.name for p in CONFIG_DIR.glob("*.yaml")} >= {"demo.yaml", "pevolm.yaml", "seqvec.yaml"}

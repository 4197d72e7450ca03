"""Run comparison: reads the engine's own run files (metrics.jsonl, run.json, checkpoint config)
and finetune results.json, compares like with like, and reads online runs through wandb.Api()."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import WandbSection
from engine.tracking import Tracker
from ops.compare import comparison, main
from ops.runs import RunReadError, load, load_runs

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(storage: Path, name: str, task: str, config: dict, decay: float, steps: int = 20,
              resumed_at: int | None = None) -> Path:
    """A run as the engine writes it: run.json and metrics.jsonl from engine.tracking.Tracker
    (W&B disabled). `resumed_at` repeats the later steps, as a run resumed from a checkpoint does."""
    tracker = Tracker(WandbSection(mode="disabled", group="cmp"), {"task": task, **config}, storage / name, name, 0)
    todo = list(range(1, steps + 1)) + (list(range(resumed_at + 1, steps + 1)) if resumed_at else [])
    for step in todo:
        ce = 3.0 * decay ** step
        tracker.log({"loss": ce, "ce": ce, "perplexity": 2.718 ** ce, "lr": 1e-3, "residues": 100.0}, step)
    tracker.finish()
    return storage / name


def write_results(path: Path, embedder: str, q10: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"embedder": embedder, "method": "la", "q10": q10, "q10_se": 0.02, "mcc": q10 - 0.1, "mcc_se": 0.03},
            {"embedder": embedder, "method": "majority", "q10": 0.29, "q10_se": 0.01, "mcc": 0.0, "mcc_se": 0.0}]
    (path / "results.json").write_text(json.dumps(rows))
    (path / "metrics.jsonl").write_text(json.dumps({"step": 0, "test/la/q10": q10}) + "\n")  # the results run
    return path


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    """Two biLSTM variants, an encoder, and finetune results of two embedders plus a merged table."""
    root = tmp_path_factory.mktemp("cmp")
    model = {"model": {"shared_directions": True, "hidden": 64}, "ray": {"name": "x", "storage_path": str(root)}}
    write_run(root / "ray", "ce_kl", "bilstm", {**model, "loss": {"w_kl": 0.75}}, 0.95, resumed_at=12)
    write_run(root / "ray", "ce_only", "bilstm", {**model, "loss": {"w_kl": 0.0}}, 0.9)
    write_run(root / "runs", "multitask", "encoder", {"model": {"dim": 32}}, 0.8, steps=10)
    write_results(root / "finetune" / "onehot", "onehot", 0.40)
    write_results(root / "finetune" / "bilstm", "bilstm", 0.55)
    merged = json.loads((root / "finetune/onehot/results.json").read_text()) + \
        json.loads((root / "finetune/bilstm/results.json").read_text())
    (root / "finetune" / "results.json").write_text(json.dumps(merged))
    return root


def test_reads_the_engines_run_files_and_compares_within_a_kind(demo_like):
    runs, results = load([str(demo_like)])
    by_name = {r.name: r for r in runs}
    assert set(by_name) == {"ce_kl", "ce_only", "multitask"} and len(results) == 3
    ce_kl = by_name["ce_kl"]
    assert ce_kl.job_type == "bilstm" and ce_kl.group == "cmp" and ce_kl.config["loss"]["w_kl"] == 0.75
    steps, ce = ce_kl.series("ce")
    assert steps == list(range(1, 21))  # the resumed steps once each
    assert ce[-1] == pytest.approx(3.0 * 0.95 ** 20)
    assert ce_kl.series("ce", "residues")[0][:3] == [100.0, 200.0, 300.0]
    table = comparison(runs, results)
    assert set(table["training"]) == {"bilstm", "encoder"}  # never a biLSTM next to the encoder
    bilstm = table["training"]["bilstm"]
    assert [r["run"] for r in bilstm["runs"]] == ["ce_kl", "ce_only"]
    assert bilstm["config_differences"] == {"loss.w_kl": [0.75, 0.0]}  # not the run names or paths
    # their loss weights differ, so their total losses are not on one axis; the CE is
    assert "loss" not in bilstm["metrics"] and bilstm["metrics"][0] == "ce" and "lr" not in bilstm["metrics"]
    assert table["training"]["encoder"]["metrics"][0] == "loss"
    only = bilstm["runs"][1]["ce"]
    assert only["last"] == only["best"] == pytest.approx(3.0 * 0.9 ** 20)
    # the merged table repeats the per-embedder rows: each row once
    assert sorted((r["embedder"], r["method"]) for r in table["results"]) == \
        [("bilstm", "la"), ("bilstm", "majority"), ("onehot", "la"), ("onehot", "majority")]
    assert table["result_metrics"] == ["q10", "mcc"]


def test_a_folder_with_a_merged_table_still_yields_the_results_below_it(tmp_path):
    """The demo's finetune folder: results.json (the merged DeepLoc table) beside deeploc/ and ss/
    (the secondary-structure results are in no merged table of that folder)."""
    ft = tmp_path / "finetune"
    write_results(ft / "deeploc" / "onehot", "onehot", 0.40)
    (ft / "results.json").write_text((ft / "deeploc/onehot/results.json").read_text())
    ss = ft / "ss" / "onehot"
    ss.mkdir(parents=True)
    (ss / "results.json").write_text(json.dumps([{"embedder": "onehot", "method": "cnn", "test_set": "cb513",
                                                   "q3": 0.65, "q3_se": 0.01}]))
    runs, results = load([str(ft)])
    table = comparison(runs, results)
    assert runs == [] and sorted((r["method"], r["test_set"]) for r in table["results"]) == \
        [("cnn", "cb513"), ("la", ""), ("majority", "")]


def test_cli_writes_tables_and_plots(demo_like, tmp_path, capsys):
    ray = demo_like / "ray"
    # the proof's command line
    assert main([str(ray / "ce_kl"), str(ray / "ce_only"), "--out", str(tmp_path / "a"),
                 "--metrics", "ce,perplexity"]) == 0
    table = json.loads((tmp_path / "a" / "comparison.json").read_text())
    assert table["training"]["bilstm"]["metrics"] == ["ce", "perplexity"]
    assert (tmp_path / "a" / "curves_bilstm.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "a" / "results.png").exists()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "bilstm: ce_kl, ce_only" in out  # one line, no table dump

    assert main([str(demo_like), "--out", str(tmp_path / "b"), "--x", "residues"]) == 0
    md = (tmp_path / "b" / "comparison.md").read_text()
    assert "## Training runs: bilstm" in md and "## Training runs: encoder" in md
    assert "| loss.w_kl | 0.75 | 0 |" in md and "ray.name" not in md and "None" not in md
    assert "| bilstm | la | – | 0.55 ± 0.02 | 0.45 ± 0.03 |" in md
    for png in ("curves_bilstm.png", "curves_encoder.png", "results.png"):
        assert (tmp_path / "b" / png).read_bytes()[:8] == PNG


def test_runs_from_before_run_json_use_the_checkpoint_config(tmp_path):
    run = write_run(tmp_path, "old", "bilstm", {"loss": {"w_kl": 0.5}}, 0.9, steps=4)
    (run / "run.json").unlink()
    ckpt = run / "checkpoint_00000004"
    ckpt.mkdir()
    (ckpt / "train_state.json").write_text(json.dumps({"step": 4}))
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "config.json").write_text(json.dumps({"kind": "bilstm", "git_commit": "abc",
                                                  "train": {"step": 4, "config": {"loss": {"w_kl": 0.5}}}}))
    [old] = load_runs([str(run)])
    assert old.name == "old" and old.job_type == "bilstm" and old.config["loss"] == {"w_kl": 0.5}


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(RunReadError, match="no training run"):
        load([str(tmp_path)])
    run = tmp_path / "bad"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(RunReadError, match=r"metrics.jsonl:2: not JSON"):
        load([str(run)])
    assert main(["no/such/run/path/x", "--out", str(tmp_path / "o")]) == 2
    assert "no/such/run/path/x: no such file or directory" in capsys.readouterr().err
    with pytest.raises(RunReadError, match="no such file"):  # a typo in a local path is not a W&B path
        load([str(tmp_path / "bad" / "missing")])
    with pytest.raises(RunReadError, match="not a run directory"):
        load([str(run / "metrics.jsonl")])


def test_online_runs_come_from_the_public_api(monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(RunReadError, match="WANDB_API_KEY"):
        load_runs(["team/project/abc123"])

    class FakeRun:
        name, id, group, job_type, tags = "online", "abc123", "g", "bilstm", ["t"]
        config = {"loss": {"w_kl": 0.75}}

        def scan_history(self):
            return [{"_step": 2, "step": 2, "ce": 2.0}, {"_step": 1, "step": 1, "ce": 3.0}]

    class FakeApi:
        def run(self, path):
            assert path == "team/project/abc123"
            return FakeRun()

    monkeypatch.setenv("WANDB_API_KEY", "not-a-real-key")
    monkeypatch.setattr(wandb, "Api", FakeApi)
    [run] = load_runs(["team/project/abc123"])
    assert (run.name, run.job_type, run.group) == ("online", "bilstm", "g")
    assert run.series("ce") == ([1, 2], [3.0, 2.0])


"""Run comparison reads real offline W&B runs and tabulates the right numbers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ops.compare import comparison, main
from ops.wandb_runs import RunReadError, load_runs, read_offline_run

WRITER = """
import sys, wandb
name, lr, decay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
run = wandb.init(project="protlm-test", group="cmp", name=name, tags=["t"], dir=sys.argv[4],
                 config={"train": {"lr": lr, "steps": 40}, "model": "bilstm"})
for step in range(40):
    run.log({"train/loss": 3.0 * decay ** step, "train/lr": lr}, step=step)
run.summary["eval/q10"] = 0.5 + lr
run.finish()
"""


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_runs")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin"}
    for name, lr, decay in [("fast", 0.1, 0.9), ("slow", 0.01, 0.99)]:
        subprocess.run([sys.executable, "-c", WRITER, name, str(lr), str(decay), str(root)],
                       check=True, env=env, timeout=120)
    return root


def test_offline_runs_decode_history_config_and_summary(two_runs):
    runs = {r.name: r for r in load_runs([str(two_runs)])}
    assert set(runs) == {"fast", "slow"}
    fast = runs["fast"]
    assert fast.group == "cmp" and fast.tags == ["t"]
    assert fast.config["train"] == {"lr": 0.1, "steps": 40}
    steps, losses = fast.series("train/loss")
    assert steps == list(range(40))
    assert losses[0] == pytest.approx(3.0) and losses[-1] == pytest.approx(3.0 * 0.9 ** 39)
    assert fast.summary["eval/q10"] == pytest.approx(0.6)


def test_comparison_table_and_plots(two_runs, tmp_path):
    assert main([str(two_runs), "--out", str(tmp_path), "--metrics", "train/loss"]) == 0
    table = json.loads((tmp_path / "comparison.json").read_text())
    rows = {r["run"]: r for r in table["runs"]}
    assert rows["slow"]["train/loss"]["last"] == pytest.approx(3.0 * 0.99 ** 39)
    assert rows["fast"]["train/loss"]["min"] == pytest.approx(3.0 * 0.9 ** 39)
    assert table["config_differences"] == {"train.lr": [0.1, 0.01]} or \
        table["config_differences"] == {"train.lr": [0.01, 0.1]}
    assert table["summary"]["fast"]["eval/q10"] == pytest.approx(0.6)
    md = (tmp_path / "comparison.md").read_text()
    assert "| fast |" in md and "train.lr" in md
    png = tmp_path / "curve_train_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    with pytest.raises(RunReadError, match="no run-"):
        read_offline_run(tmp_path)
    bad = tmp_path / "offline-run-x"
    bad.mkdir()
    (bad / "run-x.wandb").write_bytes(b"not a wandb file")
    with pytest.raises(RunReadError, match="bad header"):
        read_offline_run(bad)
    assert main(["no/such/run/path/x", "--out", str(tmp_path / "o")]) == 2
    assert "neither a local path" in capsys.readouterr().err


def test_api_runs_need_the_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(RunReadError, match="WANDB_API_KEY"):
        load_runs(["team/project/abc123"])

"""Two CPU processes (DDP, gloo): evaluation shards are not padded and metrics (grouped ones
included) sync exactly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlframe.run import evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform != "linux", reason="DDP on CPU tested on Linux")
def test_ddp_metrics_equal_single_process_evaluation(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mtlframe.cli", "train", "recipes/adult_mmoe.yaml", "--run-dir", str(run),
         "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
         "trainer.max_epochs=1", "trainer.limit_train_batches=6",
         "data.split.test=0.1001",  # 4,889 test rows: odd, so the two shards differ in size
         # grouped metrics: each group's rows are spread over both processes
         "tasks.income.metrics=[auc, logloss, gauc, ndcg@5]", "metrics_group=occupation"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test metrics") == 1          # only rank zero reports
    # the epoch line (output piped) gives each task's global epoch loss, as logged, not rank 0's share
    import pandas as pd
    import re

    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("epoch 1/1"))
    logged = pd.read_csv(run / "logs" / "metrics.csv")
    for task in ("income", "never_married"):
        printed = float(re.search(rf"train/loss/{task} ([\d.]+)", line).group(1))
        assert printed == pytest.approx(logged[f"train/loss/{task}"].dropna().iloc[-1], abs=1e-4)
    ddp = json.loads((run / "metrics.json").read_text())["test"]
    # a padding sampler would repeat a row of the odd-sized test split and shift AUC
    single = evaluate(run / "checkpoints" / "best.ckpt", "test")
    for task in ("income", "never_married"):
        assert ddp[task]["auc"] == pytest.approx(single[task]["auc"], abs=1e-6)
        assert ddp[task]["logloss"] == pytest.approx(single[task]["logloss"], abs=1e-5)
    for name in ("gauc", "ndcg@5"):
        assert 0.5 < ddp["income"][name] < 1.0
        assert ddp["income"][name] == pytest.approx(single["income"][name], abs=1e-6)

"""Scale benchmark: mtlframe on the ``synthetic`` dataset as rows grow.

20 categorical features with Zipf(1.1) ids over vocabularies of up to 10^6, 10 numeric features,
3 binary tasks (correlation 0.5); the same MMoE as the Adult benchmark. Each size runs in its own
process (``python -m benchmarks.scale --rows N --output FILE``) so its peak RSS is its own.

Reported per size: setup time (generate + split + preprocess + materialize), training samples/s
over a fixed number of steps, the data-only pass rate (rows/s of one shuffled epoch of
``ColumnBatches`` at batch 4096, no model), peak RSS (``ru_maxrss``) and the raw columnar size of
the used columns (int32 ids, float32 numerics and labels).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import max_rss_bytes

CATS = [f"cat_{j}" for j in range(20)]
NUMS = [f"x_{i:03d}" for i in range(10)]
TASKS = {f"t{k}": f"task_{k}_bin" for k in range(3)}
MB = 1 << 20


def recipe_dict(rows: int, steps: int, seed: int = 2026) -> dict:
    return {
        "seed": seed,
        "data": {"dataset": {"name": "synthetic", "num_rows": rows, "num_tasks": 3, "num_features": 10,
                             "num_categorical": 20, "categorical_cardinality": 1_000_000,
                             "zipf_exponent": 1.1, "correlation": 0.5, "seed": seed},
                 "split": {"name": "random", "val": 0.1, "test": 0.1}, "batch_size": 1024},
        "tasks": {t: {"type": "binary", "label": col, "metrics": ["auc"]} for t, col in TASKS.items()},
        "model": {"encoders": [{"name": "embedding", "features": CATS, "dim": 8},
                               {"name": "numeric", "features": NUMS}],
                  "backbone": {"name": "mmoe", "num_experts": 4, "expert_hidden": [64]},
                  "tower": {"name": "mlp", "hidden": [32]}},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": steps,
                    "limit_val_batches": 5, "enable_progress_bar": False},
        "logger": {"name": "none"},
    }


def run_size(rows: int, steps: int) -> dict:
    import tempfile
    from pathlib import Path

    import pytorch_lightning as pl

    from benchmarks.systems import _timing_callback
    from mtlframe.batching import ColumnBatches, num_rows
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train

    class Grab(pl.Callback):
        dm = None

        def on_fit_start(self, trainer, pl_module) -> None:
            Grab.dm = trainer.datamodule

    timing = _timing_callback()
    t0 = time.perf_counter()
    recipe = recipe_from_dict(recipe_dict(rows, steps), f"benchmarks.scale(rows={rows})")
    with tempfile.TemporaryDirectory(prefix="mtlframe-scale-") as tmp:
        result = train(recipe, Path(tmp) / "run", progress=False, callbacks=[timing, Grab()])
    setup_s = timing.fit_start - t0
    dm = Grab.dm
    train_cols = dm.columns["train"]
    n_train = num_rows(train_cols)
    raw = sum(dm.table.frame[c].to_numpy().nbytes for c in CATS + NUMS + list(TASKS.values()))
    vocab = {c: len(dm.preprocessor.vocab[c]) for c in CATS}
    batches = ColumnBatches(train_cols, 4096, shuffle=True, seed=1)
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        seen = 0
        for b in batches:
            seen += next(iter(b.values())).shape[0]
        passes.append(seen / (time.perf_counter() - start))
    trained = min(steps, (n_train + 1023) // 1024) * 1024
    return {"rows": rows, "train_rows": n_train, "setup_s": setup_s, "train_steps": min(steps, (n_train + 1023) // 1024),
            "samples_per_s": trained / timing.train_s, "data_pass_rows_per_s": max(passes),
            "peak_rss_mb": max_rss_bytes() / MB, "raw_columnar_mb": raw / MB,
            "rss_over_raw": max_rss_bytes() / raw, "embedding_rows": sum(vocab.values()) + len(vocab),
            "auc": {t: v["auc"] for t, v in result.metrics.get("test", {}).items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--steps", type=int, default=100, help="training steps to time (batch 1024)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", required=True, help="JSON file to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from mtlframe.run import _quiet_lightning
    _quiet_lightning()
    out = run_size(a.rows, a.steps)
    with open(a.output, "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()

"""Scale benchmark: mtlframe on the ``synthetic`` dataset as rows grow.

20 categorical features with Zipf(1.1) ids over vocabularies of up to 10^6, 10 numeric features,
3 binary tasks (correlation 0.5); the same MMoE as the Adult benchmark. Each size runs in its own
process (``python -m benchmarks.scale --rows N --output FILE``) so its peak RSS is its own.

The embedding tables are sparse (``sparse: true``: sparse gradients; row-wise Adagrad with
learning rate 0.05 on the tables, Adam 1e-3 on the rest); ``--sparse-optimizer sparse_adam``
uses SparseAdam (1e-3) on the tables, ``--dense`` dense gradients and one Adam.

Reported per size: setup time (generate + split + preprocess + materialize), training samples/s
over a fixed number of steps, the data-only pass rate (rows/s of one shuffled epoch of
``ColumnBatches`` at batch 4096, no model), peak RSS (``ru_maxrss``) and the raw columnar size of
the used columns (int32 ids, float32 numerics and labels: 20 * 4 + 10 * 4 + 3 * 4 = 132 bytes a
row). Peak RSS is split into what is not data: the process after importing torch, Lightning and
mtlframe (``baseline``) and the model (parameters, gradients, optimizer state: ``model``);
``data_rss_over_raw`` is ``(peak - baseline - model) / raw``.

``--resume`` measures ``train --resume`` instead: a run of ``--steps`` steps (one epoch,
``limit_train_batches``) that writes ``last.ckpt``, then its resume to a second epoch of as many
steps, in one process. Reported for each, in wall-clock and in CPU seconds of the process (the CPU
time is what to compare on a shared machine): the start-up (from the ``train`` call to its first
training batch), split into building the data and model (``train`` call -> Lightning's ``setup``
hook; for the resume also reading the saved recipe and comparing the preprocessor) and
Lightning's part (``setup`` -> first batch: for the resume, restoring the weights, the dense and
row-wise Adagrad state, loops, callbacks and random states); the resume's extra start-up over the
fresh one; and the checkpoint's size.
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


def recipe_dict(rows: int, steps: int, seed: int = 2026, sparse: bool = True,
                sparse_optimizer: str = "rowwise_adagrad", sparse_lr: float = 0.05) -> dict:
    return {
        "seed": seed,
        "data": {"dataset": {"name": "synthetic", "num_rows": rows, "num_tasks": 3, "num_features": 10,
                             "num_categorical": 20, "categorical_cardinality": 1_000_000,
                             "zipf_exponent": 1.1, "correlation": 0.5, "seed": seed, "keep_effects": False},
                 "split": {"name": "random", "val": 0.1, "test": 0.1}, "batch_size": 1024},
        "tasks": {t: {"type": "binary", "label": col, "metrics": ["auc"]} for t, col in TASKS.items()},
        "model": {"encoders": [{"name": "embedding", "features": CATS, "dim": 8, "sparse": sparse},
                               {"name": "numeric", "features": NUMS}],
                  "backbone": {"name": "mmoe", "num_experts": 4, "expert_hidden": [64]},
                  "tower": {"name": "mlp", "hidden": [32]}},
        "optimizer": {"name": "adam", "lr": 1e-3, "sparse_optimizer": sparse_optimizer, "sparse_lr": sparse_lr},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": steps,
                    "limit_val_batches": 5, "enable_progress_bar": False},
        "logger": {"name": "none"},
    }


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def run_size(rows: int, steps: int, sparse: bool = True, sparse_optimizer: str = "rowwise_adagrad",
             sparse_lr: float = 0.05) -> dict:
    import tempfile
    from pathlib import Path

    import pytorch_lightning as pl

    from benchmarks.systems import _timing_callback
    from mtlframe.batching import ColumnBatches, num_rows
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train

    class Grab(pl.Callback):
        dm = None
        fit_start_peak = 0
        model_bytes = 0

        def on_fit_start(self, trainer, pl_module) -> None:
            Grab.dm = trainer.datamodule
            Grab.fit_start_peak = max_rss_bytes()

        def on_train_end(self, trainer, pl_module) -> None:
            params = list(pl_module.parameters())
            state = [v for opt in trainer.optimizers for st in opt.state.values() for v in st.values()]
            Grab.model_bytes = _tensor_bytes(params) + _tensor_bytes(p.grad for p in params) + _tensor_bytes(state)

    baseline = max_rss_bytes()
    timing = _timing_callback()
    t0 = time.perf_counter()
    recipe = recipe_from_dict(recipe_dict(rows, steps, sparse=sparse, sparse_optimizer=sparse_optimizer,
                                          sparse_lr=sparse_lr), f"benchmarks.scale(rows={rows})")
    with tempfile.TemporaryDirectory(prefix="mtlframe-scale-") as tmp:
        result = train(recipe, Path(tmp) / "run", progress=False, callbacks=[timing, Grab()])
    setup_s = timing.fit_start - t0
    dm = Grab.dm
    train_cols = dm.columns["train"]
    n_train = num_rows(train_cols)
    n_all = sum(len(v) for v in dm.split_index.values())
    raw = n_all * 4 * (len(CATS) + len(NUMS) + len(TASKS))
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
    peak = max_rss_bytes()
    return {"rows": rows, "train_rows": n_train, "sparse": sparse,
            "sparse_optimizer": sparse_optimizer if sparse else None, "setup_s": setup_s,
            "train_steps": min(steps, (n_train + 1023) // 1024),
            "samples_per_s": trained / timing.train_s, "data_pass_rows_per_s": max(passes),
            "peak_rss_mb": peak / MB, "peak_rss_setup_mb": Grab.fit_start_peak / MB,
            "baseline_rss_mb": baseline / MB, "model_mb": Grab.model_bytes / MB, "raw_columnar_mb": raw / MB,
            "rss_over_raw": peak / raw, "data_rss_over_raw": (peak - baseline - Grab.model_bytes) / raw,
            "embedding_rows": sum(vocab.values()) + len(vocab),
            "auc": {t: v["auc"] for t, v in result.metrics.get("test", {}).items()}}


def run_resume(rows: int, steps: int) -> dict:
    """Start-up of a fresh run and of its resume (see the module docstring)."""
    import tempfile
    from pathlib import Path

    import pytorch_lightning as pl

    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    class Marks(pl.Callback):
        """(wall, CPU) times of Lightning's setup hook and of the first training batch."""

        setup_at: tuple[float, float] | None = None
        first_batch: tuple[float, float] | None = None

        def setup(self, trainer, pl_module, stage: str) -> None:
            if self.setup_at is None:
                self.setup_at = now()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.first_batch is None:
                self.first_batch = now()

    data = recipe_dict(rows, steps)
    data["data"]["split"]["test"] = 0.001   # the runs' final test pass is not what is measured
    recipe = recipe_from_dict(data, f"benchmarks.scale(rows={rows}, resume)")
    out: dict = {"rows": rows, "steps_per_run": steps}
    with tempfile.TemporaryDirectory(prefix="mtlframe-resume-") as tmp:
        run_dir = Path(tmp) / "run"
        for phase in ("fresh", "resume"):
            marks = Marks()
            t0 = now()
            if phase == "fresh":
                train(recipe, run_dir, progress=False, callbacks=[marks])
            else:
                train(None, resume=run_dir, overrides=["trainer.max_epochs=2"], progress=False, callbacks=[marks])
            for i, clock in enumerate(("wall", "cpu")):
                out[f"{phase}_startup_{clock}_s"] = marks.first_batch[i] - t0[i]
                out[f"{phase}_build_{clock}_s"] = marks.setup_at[i] - t0[i]
                out[f"{phase}_lightning_{clock}_s"] = marks.first_batch[i] - marks.setup_at[i]
            out[f"{phase}_total_wall_s"] = time.perf_counter() - t0[0]
            if phase == "fresh":
                out["checkpoint_mb"] = (run_dir / "checkpoints" / "last.ckpt").stat().st_size / MB
        status = json.loads((run_dir / "status.json").read_text())
        out["resumed"] = status.get("resumed")
    for key in ("startup", "build", "lightning"):
        for clock in ("wall", "cpu"):
            out[f"extra_{key}_{clock}_s"] = out[f"resume_{key}_{clock}_s"] - out[f"fresh_{key}_{clock}_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--steps", type=int, default=100, help="training steps to time (batch 1024)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense", action="store_true", help="dense embedding gradients and one Adam")
    p.add_argument("--sparse-optimizer", default="rowwise_adagrad", choices=["rowwise_adagrad", "sparse_adam"])
    p.add_argument("--sparse-lr", type=float, default=0.05, help="learning rate of the sparse tables")
    p.add_argument("--resume", action="store_true", help="measure the start-up of train --resume (see above)")
    p.add_argument("--output", required=True, help="JSON file to write")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import pytorch_lightning  # noqa: F401  (the baseline RSS counts the libraries)

    import mtlframe.builtins  # noqa: F401
    from mtlframe.run import _quiet_lightning
    _quiet_lightning()
    if a.resume:
        out = run_resume(a.rows, a.steps)
    else:
        out = run_size(a.rows, a.steps, sparse=not a.dense, sparse_optimizer=a.sparse_optimizer,
                       sparse_lr=a.sparse_lr)
    with open(a.output, "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()

"""The four systems of the Adult benchmark; each ``run_*`` returns one result dict.

Result keys: ``samples_per_s`` (training samples / seconds spent in training steps, validation
and data setup excluded), ``epoch_s`` (mean training time per epoch), ``setup_s`` (data loading,
preprocessing and model building, reported apart), ``peak_rss_mb`` / ``rss_delta_mb`` (process
RSS peak during the run, and its rise over the RSS at the run's start), ``auc`` (test AUC per
task), and where measured ``predict_rows_per_s``.
"""
from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import (BATCH_SIZE, CATEGORICAL, EMBED_DIM, EXPERT_HIDDEN, LR, NUM_EXPERTS, NUMERIC,
                               RECIPE, TASKS, TOWER_HIDDEN, PeakRSS, Prepared, auc, quiet)

MB = 1 << 20


def _result(n_train: int, epochs: int, train_s: float, setup_s: float, mem: PeakRSS, aucs: dict,
            **extra) -> dict:
    return {"samples_per_s": n_train * epochs / train_s, "epoch_s": train_s / epochs, "train_s": train_s,
            "setup_s": setup_s, "peak_rss_mb": mem.peak / MB, "rss_delta_mb": mem.delta / MB,
            "auc": aucs, **extra}


# ------------------------------------------------------------------------------------------------
# 1. reference: a hand-written loop on pre-built tensors
# ------------------------------------------------------------------------------------------------


class RefMMoE(nn.Module):
    """MMoE written out by hand: one offset embedding table, 4 expert MLPs, softmax gates, towers."""

    def __init__(self, cardinalities: list[int], num_numeric: int, tasks: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(sum(cardinalities), EMBED_DIM)
        nn.init.normal_(self.emb.weight, std=0.01)
        self.register_buffer("offsets", torch.tensor([0, *cardinalities[:-1]]).cumsum(0))
        d = len(cardinalities) * EMBED_DIM + num_numeric
        h = EXPERT_HIDDEN[-1]
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU()) for _ in range(NUM_EXPERTS))
        self.gates = nn.ModuleList(nn.Linear(d, NUM_EXPERTS) for _ in range(tasks))
        self.towers = nn.ModuleList(nn.Sequential(nn.Linear(h, TOWER_HIDDEN[0]), nn.ReLU(),
                                                  nn.Linear(TOWER_HIDDEN[0], 1)) for _ in range(tasks))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.emb(cat).flatten(1), num], dim=1)                 # (B, D)
        e = torch.stack([f(x) for f in self.experts], dim=1)                  # (B, E, H)
        outs = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(x), dim=-1).unsqueeze(-1)                  # (B, E, 1)
            outs.append(tower((w * e).sum(1)))                                # (B, 1)
        return torch.cat(outs, dim=1)                                          # (B, T)


def run_reference(data: Prepared, epochs: int, seed: int) -> dict:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        tr, te = data.splits["train"], data.splits["test"]
        model = RefMMoE(data.cardinalities, tr.num.shape[1], tr.y.shape[1])
        offs = model.offsets
        cat = torch.from_numpy(tr.cat) + offs
        num, y = torch.from_numpy(tr.num), torch.from_numpy(tr.y)
        # the Adam kernel mtlframe uses (fused: one kernel for all parameters), so the comparison is
        # of everything but the optimizer implementation
        opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
        loss_fn = nn.BCEWithLogitsLoss()
        n = len(y)
        gen = torch.Generator().manual_seed(seed)
        setup_s = time.perf_counter() - t0
        train_s = 0.0
        for _ in range(epochs):
            start = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=gen)
            c, x, t = cat[perm], num[perm], y[perm]
            for i in range(0, n, BATCH_SIZE):
                logits = model(c[i:i + BATCH_SIZE], x[i:i + BATCH_SIZE])
                yb = t[i:i + BATCH_SIZE]
                loss = sum(loss_fn(logits[:, k], yb[:, k]) for k in range(yb.shape[1]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            train_s += time.perf_counter() - start
        model.eval()
        tcat = torch.from_numpy(te.cat) + offs
        tnum = torch.from_numpy(te.num)
        start = time.perf_counter()
        with torch.inference_mode():
            prob = torch.cat([torch.sigmoid(model(tcat[i:i + 8192], tnum[i:i + 8192]))
                              for i in range(0, len(te), 8192)]).numpy()
        predict_s = time.perf_counter() - start
    aucs = {t: auc(te.y[:, k], prob[:, k]) for k, t in enumerate(TASKS)}
    return _result(n, epochs, train_s, setup_s + data.setup_seconds, mem, aucs,
                   predict_rows_per_s=len(te) / predict_s)


# ------------------------------------------------------------------------------------------------
# 2. mtlframe through its recipe path
# ------------------------------------------------------------------------------------------------


def _timing_callback():
    import pytorch_lightning as pl

    class TrainTiming(pl.Callback):
        """Time spent in training steps (first batch start to last batch end, per epoch)."""

        def __init__(self) -> None:
            self.fit_start = None
            self.train_s = 0.0
            self.epochs = 0
            self.samples = 0
            self.epoch_s: list[float] = []
            self._t0 = self._last = None

        def on_fit_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t0 = self._last = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._last = time.perf_counter()
            self.samples += int(next(iter(batch.values())).shape[0])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.train_s += self._last - self._t0
            self.epoch_s.append(self._last - self._t0)
            self.epochs += 1

    return TrainTiming()


def run_mtlframe(data: Prepared, epochs: int, seed: int, overrides: list[str] | None = None,
                 recipe_path: str = RECIPE, warmup_epoch: bool = False) -> dict:
    from mtlframe.recipe import load_recipe
    from mtlframe.run import load_checkpoint, predict_frame, train

    timing = _timing_callback()
    recipe_path = str(Path(__file__).resolve().parents[1] / recipe_path)  # from any working directory
    ovr = [f"seed={seed}", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", *(overrides or [])]
    if data.truncated:  # tiny mode: as many steps as the anchors take
        ovr.append(f"trainer.limit_train_batches={-(-len(data.splits['train']) // BATCH_SIZE)}")
    with PeakRSS() as mem, tempfile.TemporaryDirectory(prefix="mtlframe-bench-") as tmp:
        t0 = time.perf_counter()
        recipe = load_recipe(recipe_path, ovr)
        with quiet():
            result = train(recipe, Path(tmp) / "run", progress=False, callbacks=[timing])
        setup_s = timing.fit_start - t0
        loaded = load_checkpoint(result.best_checkpoint)
        frame = data.frames["test"]
        start = time.perf_counter()
        predict_frame(loaded, frame)
        predict_s = time.perf_counter() - start
    aucs = {t: result.metrics["test"][t]["auc"] for t in TASKS}
    train_s, epochs = timing.train_s, timing.epochs
    if warmup_epoch and epochs > 1:  # compilation happens in the first steps: time it apart
        steady = sum(timing.epoch_s[1:]) / (epochs - 1)
        setup_s += timing.epoch_s[0] - steady
        train_s = train_s - timing.epoch_s[0] + steady
    return _result(timing.samples / timing.epochs, epochs, train_s, setup_s, mem, aucs,
                   predict_rows_per_s=len(frame) / predict_s)


def run_mtlframe_compiled(data: Prepared, epochs: int, seed: int) -> dict:
    """mtlframe with ``trainer.compile: true``; the first epoch's extra time (compilation) counts
    as setup, its steps at the speed of the later epochs."""
    return run_mtlframe(data, epochs, seed, overrides=["trainer.compile=true"], warmup_epoch=True)


# ------------------------------------------------------------------------------------------------
# 3. torch-rechub
# ------------------------------------------------------------------------------------------------


def available(system: str) -> str | None:
    """``None`` if the system can run, else why not."""
    module = {"rechub": "torch_rechub", "deepctr": "deepctr_torch"}.get(system)
    if module and importlib.util.find_spec(module) is None:
        dist = {"rechub": "torch-rechub", "deepctr": "deepctr-torch"}[system]
        return f"{dist} is not installed (pip install -e '.[bench]' torch==<your torch>)"
    return None


def _x_dict(split, cards) -> dict[str, np.ndarray]:
    x = {c: split.cat[:, i] for i, c in enumerate(CATEGORICAL)}
    x.update({c: split.num[:, i] for i, c in enumerate(NUMERIC)})
    return x


def run_rechub(data: Prepared, epochs: int, seed: int) -> dict:
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import TorchDataset

    with PeakRSS() as mem, tempfile.TemporaryDirectory(prefix="rechub-bench-") as tmp:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        tr, te = data.splits["train"], data.splits["test"]
        features = [SparseFeature(c, vocab_size=v, embed_dim=EMBED_DIM)
                    for c, v in zip(CATEGORICAL, data.cardinalities)] + [DenseFeature(c) for c in NUMERIC]
        model = MMOE(features, task_types=["classification"] * len(TASKS), n_expert=NUM_EXPERTS,
                     expert_params={"dims": EXPERT_HIDDEN},
                     tower_params_list=[{"dims": TOWER_HIDDEN}] * len(TASKS))
        trainer = MTLTrainer(model, task_types=["classification"] * len(TASKS),
                             optimizer_params={"lr": LR, "weight_decay": 0.0}, n_epoch=epochs,
                             device="cpu", model_path=tmp)
        train_loader = DataLoader(TorchDataset(_x_dict(tr, data.cardinalities), tr.y), batch_size=BATCH_SIZE,
                                  shuffle=True)
        test_loader = DataLoader(TorchDataset(_x_dict(te, data.cardinalities), te.y), batch_size=BATCH_SIZE)
        setup_s = time.perf_counter() - t0
        train_s = 0.0
        with quiet():
            for _ in range(epochs):  # MTLTrainer.fit = this loop + validation + early stopping + save
                start = time.perf_counter()
                trainer.train_one_epoch(train_loader)
                train_s += time.perf_counter() - start
            start = time.perf_counter()
            scores = trainer.evaluate(trainer.model, test_loader)
            predict_s = time.perf_counter() - start
    return _result(len(tr), epochs, train_s, setup_s + data.setup_seconds, mem,
                   {t: float(s) for t, s in zip(TASKS, scores)}, predict_rows_per_s=len(te) / predict_s)


# ------------------------------------------------------------------------------------------------
# 4. DeepCTR-Torch
# ------------------------------------------------------------------------------------------------


def run_deepctr(data: Prepared, epochs: int, seed: int) -> dict:
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import MMOE

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        tr, te = data.splits["train"], data.splits["test"]
        columns = [SparseFeat(c, vocabulary_size=v, embedding_dim=EMBED_DIM)
                   for c, v in zip(CATEGORICAL, data.cardinalities)] + [DenseFeat(c, 1) for c in NUMERIC]
        with quiet():
            model = MMOE(columns, num_experts=NUM_EXPERTS, expert_dnn_hidden_units=tuple(EXPERT_HIDDEN),
                         gate_dnn_hidden_units=(), tower_dnn_hidden_units=tuple(TOWER_HIDDEN),
                         l2_reg_embedding=0.0, l2_reg_linear=0.0, task_types=["binary"] * len(TASKS),
                         task_names=TASKS, seed=seed, device="cpu")
            model.compile(torch.optim.Adam(model.parameters(), lr=LR), loss=["binary_crossentropy"] * len(TASKS))
        x_tr, x_te = _x_dict(tr, data.cardinalities), _x_dict(te, data.cardinalities)
        setup_s = time.perf_counter() - t0
        with quiet():
            start = time.perf_counter()
            model.fit(x_tr, tr.y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0, shuffle=True)
            train_s = time.perf_counter() - start
            start = time.perf_counter()
            prob = model.predict(x_te, batch_size=8192)
            predict_s = time.perf_counter() - start
    aucs = {t: auc(te.y[:, k], prob[:, k]) for k, t in enumerate(TASKS)}
    return _result(len(tr), epochs, train_s, setup_s + data.setup_seconds, mem, aucs,
                   predict_rows_per_s=len(te) / predict_s)


SYSTEMS = {"reference": run_reference, "mtlframe": run_mtlframe, "rechub": run_rechub, "deepctr": run_deepctr,
           "mtlframe-compile": run_mtlframe_compiled}
LABELS = {"reference": "hand-written loop (reference)", "mtlframe": "mtlframe (recipe path)",
          "rechub": "torch-rechub MMOE + MTLTrainer", "deepctr": "DeepCTR-Torch MMOE.fit",
          "mtlframe-compile": "mtlframe, trainer.compile: true"}

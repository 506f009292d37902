"""Training, evaluation and prediction: what the ``mtlframe`` commands do, callable from Python.

Example::

    from mtlframe.recipe import load_recipe
    from mtlframe.run import train
    result = train(load_recipe("recipes/quickstart.yaml", ["trainer.max_epochs=2"]), "runs/qs")
    result.metrics["test"]["recommended"]["auc"]
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlframe import memory_plan
from mtlframe.errors import CheckpointError, DataError, MTLFrameError, RecipeError, file_problem, near_hint
from mtlframe.recipe import Recipe, recipe_from_dict


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory (``recipe.yaml``, ``metrics.json``, ``checkpoints/``, logs).
        metrics: ``{"test": {task: {metric: value}}, "val": {...}}`` of the best checkpoint.
        best_checkpoint: path of the best checkpoint.
        num_parameters: trainable parameters of the model.
        train_seconds: wall time of ``fit``.
        providers: ``"<kind>:<name>" -> "<distribution> <version>"``.
    """

    run_dir: Path
    metrics: dict[str, dict[str, dict[str, float]]]
    best_checkpoint: str
    num_parameters: int
    train_seconds: float
    providers: dict[str, str] = field(default_factory=dict)
    is_global_zero: bool = True


def _quiet_lightning() -> None:
    """Silence Lightning's info chatter (device summary, tips); call after importing it."""
    import logging

    import pytorch_lightning  # noqa: F401 - it sets its own logger levels on import

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # a data.stream ParquetStream knows its length per worker count (StreamDataModule)
    warnings.filterwarnings("ignore", message=".*IterableDataset` has `__len__` defined.*")
    # metric values are synced by torchmetrics before logging; Lightning cannot know that
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")
    # MultiTaskModule moves its own batches (flat dicts of tensors), whichever data module feeds them
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device` in `LightningModule`.*")


def _monitor(recipe: Recipe, module, monitor: str, mode: str) -> tuple[str, str]:
    """``(logged key, "min" | "max")`` of a recipe monitor: ``auto`` is ``val/score``; a task name is
    that task's primary validation metric; ``mode: auto`` follows the metric's direction."""
    if monitor == "auto":
        return "val/score", "max"
    if monitor in recipe.config.tasks:
        monitor = f"val/{monitor}/{recipe.task_metrics(monitor)[0]}"
    if mode != "auto":
        return monitor, mode
    parts = monitor.split("/")
    task = recipe.config.tasks.get(parts[1]) if len(parts) == 3 else None
    if task is not None and task.type == "retrieval":  # full-ranking metrics (popularity@K: lower is better)
        from mtlframe.ranking import higher_is_better

        return monitor, "max" if higher_is_better(parts[2]) else "min"
    if len(parts) == 3 and parts[1] in module.metric_defs and parts[2] in module.metric_defs[parts[1]]:
        return monitor, "max" if module.metric_defs[parts[1]][parts[2]].higher_is_better else "min"
    return monitor, ("min" if "loss" in monitor else "max")


def _logger(recipe: Recipe, run_dir: Path):
    cfg = recipe.config.logger
    if cfg.name == "none":
        return False
    if cfg.name == "csv":
        from pytorch_lightning.loggers import CSVLogger
        return CSVLogger(str(run_dir), name="logs", version="")
    if cfg.name == "tensorboard":
        try:
            from pytorch_lightning.loggers import TensorBoardLogger
            return TensorBoardLogger(str(run_dir), name="tensorboard", version="")
        except ModuleNotFoundError as exc:
            raise MTLFrameError("logger.name 'tensorboard' needs the tensorboard package: "
                                "pip install 'mtlframe[tensorboard]'") from exc
    try:
        import wandb  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MTLFrameError("logger.name 'wandb' needs the wandb package: pip install 'mtlframe[wandb]'") from exc
    from pytorch_lightning.loggers import WandbLogger
    offline = cfg.offline
    if offline is None:  # offline unless the user has logged in (or set WANDB_MODE)
        offline = not (os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().exists()) \
            and os.environ.get("WANDB_MODE") != "online"
    return WandbLogger(project=cfg.project or "mtlframe", save_dir=str(run_dir), offline=offline)


def _checkpoint_io():
    """Lightning's checkpoint I/O for local files without transient copies: saving streams tensor by
    tensor (Lightning's default builds the whole file in memory first), loading memory-maps the file
    (evaluating the best checkpoint then reads the weights, not the optimizer state)."""
    from lightning_fabric.utilities.cloud_io import get_filesystem
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    class StreamingCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            fs = get_filesystem(path)
            if storage_options is not None or type(fs).__name__ != "LocalFileSystem":
                return super().save_checkpoint(checkpoint, path, storage_options)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            torch.save(checkpoint, tmp)   # written tensor by tensor
            os.replace(tmp, path)         # atomic, as Lightning's own writer
            return None

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            if type(get_filesystem(path)).__name__ != "LocalFileSystem" or not Path(path).is_file():
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            return torch.load(path, map_location=map_location or "cpu", mmap=True,
                              weights_only=True if weights_only is None else weights_only)

    return StreamingCheckpointIO()


def _interactive_output() -> bool:
    """Whether stdout is a terminal or a notebook, where a live progress bar renders."""
    from rich.console import Console

    console = Console()
    return console.is_terminal or console.is_jupyter


def _epoch_lines_callback():
    """One line per epoch (steps, seconds, ``train/loss``, every ``val/`` metric), flushed as it is
    printed: the progress display when output goes to a file or a pipe, where a live bar would show
    only its last state, at the end of the run."""
    import pytorch_lightning as pl

    class EpochLines(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            # a run resumed in the middle of an epoch gets no on_train_epoch_start for that epoch
            # (Lightning skips it): its line counts the steps and seconds since the resume
            self.on_train_epoch_start(trainer, pl_module)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start, self._step = time.perf_counter(), trainer.global_step
            self._loss, self._batches = None, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if getattr(pl_module, "_epoch_steps", None) is not None:  # the module keeps its own sums
                return
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, torch.Tensor):  # summed on the device: no synchronization per step
                self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
                self._batches += 1

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            m = trainer.callback_metrics
            total, steps = getattr(pl_module, "_epoch_total", None), getattr(pl_module, "_epoch_steps", None)
            stats = getattr(pl_module, "_epoch_stats", None)
            if steps is not None and trainer.world_size > 1:
                # this process's total is only its share of each step's loss; the per-task sums and
                # counts were reduced every step, so each task's epoch loss is global here
                n = len(pl_module.tasks)
                row = stats.tolist() if stats is not None else []
                values = [f"train/loss/{t.name} {row[n + i] / row[i]:.4f}" for i, t in enumerate(pl_module.tasks)
                          if row and row[i] > 0]
            elif steps is not None:  # the module's own epoch sums: every combiner, skipped steps left out
                values = [f"train/loss {float(total) / steps:.4f}"] if steps and total is not None else []
            else:
                values = [f"train/loss {float(self._loss) / self._batches:.4f}"] if self._batches else []
            keys = [k for k in ("val/score",) if k in m]
            keys += sorted(k for k in m if k.startswith("val/") and k != "val/score" and k.count("/") == 2)
            values = "  ".join(values + [f"{k} {float(m[k]):.0f}" if k.endswith("_groups") else  # counts
                                         f"{k} {float(m[k]):.4f}" for k in keys])
            total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
            print(f"epoch {trainer.current_epoch + 1}{total}  {trainer.global_step - self._step} steps  "
                  f"{time.perf_counter() - self._start:.1f} s  {values}", flush=True)

    return EpochLines()


class RunInterrupted(KeyboardInterrupt):
    """``train`` was interrupted (Ctrl-C). ``str()`` says where; the run folder's ``status.json``
    says ``"interrupted"`` and names the checkpoints it holds. The command line exits with 130."""


class NoFiniteScoreError(MTLFrameError):
    """Every validation of a run gave a NaN (or infinite) monitored value: there is no best
    checkpoint to report. ``metrics.json`` is not written; ``status.json`` says ``"failed"``."""


def _fmt(value: float | None) -> str:
    return "NaN" if value is None or value != value else f"{value:.4f}"


def _checkpoint_callback(**kwargs: Any):
    """Lightning's ``ModelCheckpoint`` whose file names count epochs from 1, as every line mtlframe
    prints does (``epoch=3-step=120.ckpt`` holds the weights after the third epoch)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    class OneBasedCheckpoint(ModelCheckpoint):
        #: global step of each file this process wrote (``last.ckpt`` is written beside the best)
        saved_steps: dict[str, int]

        def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
            if "epoch" in metrics:
                metrics = {**metrics, "epoch": metrics["epoch"] + 1}
            return super().format_checkpoint_name(metrics, filename, ver, prefix)

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            # a run folder copied or moved since (resumed elsewhere): Lightning would drop the best
            # score and keep the old paths, so the next validation replaced best.ckpt whatever its
            # score; the saved paths are moved under this folder instead
            old = state_dict.get("dirpath")
            if old and self.dirpath and old != self.dirpath:
                def moved(path):
                    p = Path(path) if path else None
                    return str(Path(self.dirpath) / p.relative_to(old)) if p and p.is_relative_to(old) else path

                state_dict = {**state_dict, "dirpath": self.dirpath,
                              **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                       "last_model_path") if k in state_dict},
                              "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
            super().load_state_dict(state_dict)

        def _save_checkpoint(self, trainer, filepath: str) -> None:
            steps = self.__dict__.setdefault("saved_steps", {})
            # last.ckpt of the step whose best checkpoint was just written: the same state, so a hard
            # link to it (a later best.ckpt replaces its file, the link keeps this one), not a second write
            same = [p for p, s in steps.items() if s == trainer.global_step and p != str(filepath) and Path(p).is_file()]
            if Path(filepath).name == f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}" and same:
                if trainer.is_global_zero:
                    _copy_file(Path(same[0]), Path(filepath))
                trainer.strategy.barrier("last checkpoint")
                self._last_global_step_saved, self._last_checkpoint_saved = trainer.global_step, filepath
            else:
                super()._save_checkpoint(trainer, filepath)
            steps[str(filepath)] = trainer.global_step

    return OneBasedCheckpoint(**kwargs)


@dataclass
class _Watched:
    """One value an early-stopping policy watches (``task``/``metric`` set for a task's metric)."""

    key: str
    mode: str
    task: str | None = None
    metric: str | None = None
    best: float = float("nan")
    best_epoch: int = 0
    wait: int = 0
    current: float = float("nan")

    def exhausted(self, patience: int) -> bool:
        return self.current != self.current or self.wait >= patience

    def describe(self, patience: int) -> dict[str, Any]:
        nan = self.current != self.current
        best = None if self.best != self.best else self.best
        reason = (f"{self.key} is NaN" if nan else f"{self.key} did not improve for {self.wait} validation(s)")
        reason += f" (best {_fmt(best)}" + (f" at epoch {self.best_epoch})" if best is not None else ")")
        return {"monitor": self.key, "task": self.task, "metric": self.metric, "best": best,
                "best_epoch": self.best_epoch or None, "cause": "nan" if nan else "patience", "reason": reason}


def _early_stopping_callback(watched: list[_Watched], policy: str, patience: int, min_delta: float):
    """Stop training by a recipe's ``early_stopping`` policy, checked after every validation.

    ``policy``: ``"one"`` (a single monitored value), ``"all"`` (stop when every task's primary
    metric has gone ``patience`` validations without improving by more than ``min_delta``, all at
    the same time) or ``"any"`` (stop when one of them has). A NaN (or infinite) value counts as
    exhausted at once: it stops ``one`` and ``any``, and counts as stopped for ``all``. A task
    with no labelled validation row is not watched. ``.stopped`` holds the reason (epoch, policy,
    patience, and per watched value its task, metric, best value and epoch) once it stops.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerFn

    class PolicyEarlyStopping(pl.Callback):
        def __init__(self) -> None:
            self.watched, self.policy, self.patience, self.min_delta = watched, policy, patience, min_delta
            self.stopped: dict[str, Any] | None = None

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
                return
            m = trainer.callback_metrics
            rows = getattr(pl_module, "last_rows", {}).get("val", {})
            epoch = trainer.current_epoch + 1
            active = []
            for w in self.watched:
                if w.key not in m or (w.task is not None and rows.get(w.task, 1) == 0):
                    continue
                active.append(w)
                v = float(m[w.key])
                w.current = v if math.isfinite(v) else float("nan")
                if w.current != w.current:
                    w.wait += 1
                    continue
                better = (w.best != w.best or (v > w.best + self.min_delta if w.mode == "max"
                                               else v < w.best - self.min_delta))
                if better:
                    w.best, w.best_epoch, w.wait = v, epoch, 0
                else:
                    w.wait += 1
            done = [w for w in active if w.exhausted(self.patience)]
            stop = bool(active) and (len(done) == len(active) if self.policy == "all" else bool(done))
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop and self.stopped is None:
                trainer.should_stop = True
                self.stopped = {"epoch": epoch, "policy": self.policy, "patience": self.patience,
                                "min_delta": self.min_delta, "monitors": [w.describe(self.patience) for w in done]}

        def state_dict(self) -> dict[str, Any]:
            """Each watched value's best, its epoch and the validations without improvement, so a
            resumed run (``train --resume``) counts patience on from where it stopped."""
            return {"watched": {w.key: {"best": w.best, "best_epoch": w.best_epoch, "wait": w.wait}
                                for w in self.watched}}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            saved = state.get("watched", {})
            for w in self.watched:
                if w.key in saved:
                    w.best, w.best_epoch, w.wait = (float(saved[w.key]["best"]), int(saved[w.key]["best_epoch"]),
                                                    int(saved[w.key]["wait"]))

        def message(self) -> str | None:
            if self.stopped is None:
                return None
            what = {"one": "", "all": "every monitored task stopped improving: ",
                    "any": "a monitored task stopped improving: "}[self.policy]
            reasons = "; ".join(d["reason"] for d in self.stopped["monitors"])
            return (f"early stopping after epoch {self.stopped['epoch']}: {what}{reasons} "
                    f"(patience {self.patience}, min_delta {self.min_delta:g})")

    return PolicyEarlyStopping()


def _status_callback(run_dir: Path):
    """Writes ``status.json`` when training is interrupted (Ctrl-C): the epoch and step reached, the
    checkpoint saved at that point (``checkpoints/interrupted.ckpt``) and the best one so far.
    ``.interrupted`` holds the same mapping."""
    import pytorch_lightning as pl

    class RunStatus(pl.Callback):
        interrupted: dict[str, Any] | None = None

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            if not isinstance(exception, KeyboardInterrupt):
                return
            fitting = trainer.state.fn is not None and trainer.state.fn.value == "fit"
            info: dict[str, Any] = {
                "status": "interrupted", "during": "training" if fitting else "the evaluation of the best checkpoint",
                "epoch": trainer.current_epoch + 1, "max_epochs": trainer.max_epochs, "step": trainer.global_step,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            last = run_dir / "checkpoints" / "interrupted.ckpt"
            if fitting and trainer.global_step > 0 and trainer.world_size > 1:
                # saving goes through a barrier: processes that did not get the Ctrl-C would hang it
                info["last_checkpoint_error"] = "not saved: an interrupted multi-process run saves no checkpoint"
            elif fitting and trainer.global_step > 0:
                try:
                    trainer.save_checkpoint(str(last))
                    info["last_checkpoint"] = str(last)
                    resumer = getattr(self, "resume_state", None)
                    if resumer is not None:  # Ctrl-C is taken at a batch boundary: the exact batch resumes
                        info["batch"] = resumer.batches
                    info["resumable"] = True
                    info["resume"] = f"mtlframe train --resume {run_dir}"
                except Exception as exc:  # noqa: BLE001 - the marker matters more than this file
                    info["last_checkpoint_error"] = f"{type(exc).__name__}: {exc}"
                    # a model that diverged since the last check (nan_loss: stop) is not saved: say why
                    info["not_saved"] = f"{last.name} was not saved: {exc}"
            if "resumable" not in info:
                lasts = run_dir / "checkpoints" / "last.ckpt"
                info["resumable"] = fitting and lasts.is_file()
                if info["resumable"]:  # from the last validation's state
                    info["resume"] = f"mtlframe train --resume {lasts}"
            best = [cb.best_model_path for cb in trainer.checkpoint_callbacks
                    if getattr(cb, "best_model_path", "") and Path(cb.best_model_path).is_file()]
            if best:
                info["best_checkpoint"] = best[0]
            self.interrupted = info
            if trainer.is_global_zero:
                _write_status(run_dir, info)

    return RunStatus()


#: checkpoint key of what ``train --resume`` needs beyond Lightning's own state (see :func:`_resume_callback`)
RESUME_KEY = "mtlframe_resume"


def _rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python random generators' states, as plain tensors and
    numbers (a checkpoint is read back with ``weights_only=True``)."""
    import random

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                       float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` returned."""
    import random

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_callback(datamodule):
    """What makes ``train --resume`` exact, beyond Lightning's own checkpoint state (weights,
    optimizer, schedulers, loop counters, callbacks):

    * saved into every checkpoint under :data:`RESUME_KEY`: the epoch and the number of its
      batches trained, whether the epoch's batches are all done, the torch / numpy / Python
      random states and the module's own running state
      (:meth:`~mtlframe.module.MultiTaskModule.resume_state`);
    * on resume (``trainer.fit(ckpt_path=...)``): the random states are restored and the training
      dataloader starts at the saved epoch (its permutation and sampler draw are functions of the
      seed and the epoch) after the batches already trained: a checkpoint written in the middle of
      an epoch resumes at the exact batch;
    * Ctrl-C (SIGINT) while fitting on one process stops at the end of the current training batch
      (of the current gradient-accumulation window), so the saved ``interrupted.ckpt`` holds a
      consistent state; a second Ctrl-C stops at once.
    """
    import signal
    import sys
    import threading

    import pytorch_lightning as pl

    class ResumeState(pl.Callback):
        def __init__(self) -> None:
            self.batches = 0                          # batches of the current epoch trained
            self.stop_requested = False
            self._loaded: dict[str, Any] | None = None
            self._handler: Any = None

        # -- Ctrl-C: stop at a batch boundary --------------------------------------------------
        def _on_sigint(self, signum, frame) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            print("Ctrl-C: stopping after this training batch and saving checkpoints/interrupted.ckpt "
                  "(resume with mtlframe train --resume RUN_DIR); press Ctrl-C again to stop at once.",
                  file=sys.stderr, flush=True)

        def _restore_handler(self) -> None:
            # Lightning's signal connector puts back, at its teardown, the handler it found at setup
            # (ours): so restore whenever ours is the one installed, not only the first time
            if self._handler is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, self._handler)

        def on_fit_start(self, trainer, pl_module) -> None:
            self.stop_requested = False
            if (trainer.world_size == 1 and threading.current_thread() is threading.main_thread()
                    and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
                self._handler = signal.signal(signal.SIGINT, self._on_sigint)
            state, self._loaded = self._loaded, None
            if state is None:
                return
            self.batches = 0 if state["epoch_done"] else state["batches"]
            pl_module.load_resume_state(state["module"])
            _set_rng_state(state["rng"])     # last: nothing before the first batch draws from them

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.batches += 1
            if self.stop_requested and (self.batches % trainer.accumulate_grad_batches == 0
                                        or self.batches >= trainer.num_training_batches):
                raise KeyboardInterrupt

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            done = (self.batches >= trainer.num_training_batches
                    or bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch))
            checkpoint[RESUME_KEY] = {"format": 1, "epoch": trainer.current_epoch, "batches": self.batches,
                                      "epoch_done": done, "step": trainer.global_step, "rng": _rng_state(),
                                      "module": pl_module.resume_state(), "world_size": trainer.world_size}

        def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            from pytorch_lightning.trainer.states import TrainerFn

            state = checkpoint.get(RESUME_KEY)
            if state is None or trainer.state.fn != TrainerFn.FITTING:   # evaluating a checkpoint: nothing
                return
            # `devices: auto` is known only now (an explicit count was checked before: _check_resume)
            problem = _world_size_problem(state, trainer.world_size)
            if problem:
                raise MTLFrameError(problem)
            # before the training dataloader is made (configure_optimizers may make it, before on_fit_start)
            datamodule.resume_position = ((state["epoch"] + 1, 0) if state["epoch_done"]
                                          else (state["epoch"], state["batches"]))
            self._loaded = state   # the rest by on_fit_start

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            self._restore_handler()

        def teardown(self, trainer, pl_module, stage: str) -> None:
            self._restore_handler()

    return ResumeState()


def _write_status(run_dir: Path, info: Mapping[str, Any]) -> None:
    """``run_dir/status.json``: ``running``, ``finished``, ``failed`` or ``interrupted``, with details."""
    (run_dir / "status.json").write_text(json.dumps(_finite(dict(info)), indent=2), encoding="utf-8")


def _clear_run(run_dir: Path) -> None:
    """Remove an earlier run's checkpoints, metrics and status (``--overwrite``)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for name in ("metrics.json", "status.json"):
        (run_dir / name).unlink(missing_ok=True)


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run folder that holds a run (finished, failed, interrupted or unfinished) unless
    ``overwrite`` (then :func:`_clear_run` removes it, once the new run's recipe and data are built).

    Raises:
        MTLFrameError: ``run_dir`` is a file, or holds a run and ``overwrite`` is False.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise MTLFrameError(f"--run-dir {run_dir} is a file; pass a folder (it is created if missing).")
    status: dict[str, Any] = {}
    try:
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if overwrite:
        return
    choice = "pass --overwrite to start over in it (its checkpoints are deleted), or another --run-dir"
    resumable = (run_dir / "checkpoints" / "last.ckpt").is_file()   # any run of this version can be continued
    if (run_dir / "metrics.json").exists():
        extend = f" (mtlframe train --resume {run_dir} trainer.max_epochs=N trains it longer)" if resumable else ""
        raise MTLFrameError(f"{run_dir} already holds a finished run (metrics.json){extend}; pass another --run-dir, "
                            "or --overwrite to replace it.")
    state = status.get("status")
    if state == "interrupted":
        where = f"epoch {status.get('epoch')}" + (f"/{status['max_epochs']}" if status.get("max_epochs") else "")
        saved = [f"{k.replace('_', ' ')} {status[k]}" for k in ("last_checkpoint", "best_checkpoint") if status.get(k)]
        raise MTLFrameError(f"{run_dir} holds a run interrupted during {status.get('during', 'training')} at {where}, "
                            f"step {status.get('step')}" + (f" ({'; '.join(saved)})" if saved else "")
                            + (f". Continue it with mtlframe train --resume {run_dir}, or {choice}."
                               if status.get("resumable") or resumable else f"; {choice}."))
    if resumable:
        choice = f"continue it from its last validation with mtlframe train --resume {run_dir}, or {choice}"
    if state == "failed":
        raise MTLFrameError(f"{run_dir} holds a failed run ({str(status.get('reason', '')).splitlines()[0][:200]}); "
                            f"{choice}.")
    if state == "running" and _pid_alive(status.get("pid")):
        raise MTLFrameError(f"{run_dir} holds a run that is still training in process {status.get('pid')} (started "
                            f"{status.get('started')}); wait for it to finish, or stop it (Ctrl-C there), before "
                            "using this folder again; or pass another --run-dir.")
    if state == "running":
        raise MTLFrameError(f"{run_dir} holds a run started at {status.get('started')} that never finished (still "
                            f"running in another process (pid {status.get('pid')}), or killed); {choice}.")
    if ckpts:
        raise MTLFrameError(f"{run_dir} holds checkpoints of an earlier run ({', '.join(c.name for c in ckpts[:3])}); "
                            f"{choice}.")


def _progress_bar():
    """Lightning's progress bar (rich when installed, else tqdm) with epochs counted from 1 and the
    total shown, ``Epoch 3/15``, as the per-epoch lines print them."""
    from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
    from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

    def describe(trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"Epoch {trainer.current_epoch + 1}{total}"

    if _RICH_AVAILABLE:
        class OneBasedRichBar(RichProgressBar):
            def _get_train_description(self, current_epoch: int) -> str:
                text = describe(self.trainer)
                return f"{text:{len(self.validation_description)}}"

        return OneBasedRichBar()

    class OneBasedTQDMBar(TQDMProgressBar):
        def on_train_epoch_start(self, trainer, *args: Any) -> None:
            super().on_train_epoch_start(trainer, *args)
            self.train_progress_bar.set_description(describe(trainer))

    return OneBasedTQDMBar()


def _make_trainer(recipe: Recipe, kwargs: dict[str, Any]):
    """``pl.Trainer(**kwargs)``; Lightning's refusals of the recipe's ``trainer`` settings (no GPU for
    ``accelerator: gpu``, too many ``devices``, an unknown ``strategy``) become recipe errors."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = pl.Trainer(**kwargs)
        # the launcher's process counts (torchrun, srun) against devices / num_nodes: Lightning checks
        # them only when fit launches, as a ValueError per process; checked here, before the run starts
        env = getattr(trainer.strategy, "cluster_environment", None)
        if env is not None:
            env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
        return trainer
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise _trainer_error(recipe, exc) from exc


def _trainer_error(recipe: Recipe, exc: Exception) -> RecipeError:
    text = str(exc)
    low = text.lower()
    t = recipe.config.trainer
    names = ("accelerator", "devices", "strategy", "precision", "num_nodes")
    # the argument Lightning quotes (devices=0, `devices`), else one it names
    key = next((k for k in names if f"{k}=" in low or f"`{k}`" in low), None)
    if key is None:
        key = next((k for k in names if k in low),
                   "accelerator" if "backend" in low or "gpu" in low or "cuda" in low else "")
    where = f"trainer.{key}" if key else "trainer"
    settings = (f"accelerator={t.accelerator!r}, devices={t.devices!r}, strategy={t.strategy!r}, "
                f"precision={t.precision!r}")
    hint = ("`accelerator: auto` and `devices: auto` pick what the machine has" if "world size" not in low
            and "slurm" not in low else "under torchrun, `--nproc-per-node` must equal trainer.devices and `--nnodes` "
            "trainer.num_nodes; under srun, `--ntasks-per-node` trainer.devices and `--nodes` trainer.num_nodes: "
            "docs/multinode.md")
    return RecipeError([(where, f"Lightning cannot set up this machine with {settings}, num_nodes={t.num_nodes!r}: "
                                f"{text.strip()} ({hint})")],
                       recipe.source, recipe.lines)


def _finish_logger(logger) -> None:
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb
        wandb.finish()
        wandb.teardown()  # offline finish() may return before the run file is complete


def compile_device_note(mode: str, accelerator: str) -> str | None:
    """Why ``trainer.compile.mode`` will not do all it says on this run's device, or ``None``.

    ``reduce-overhead`` (and ``max-autotune``) capture the compiled parts in CUDA graphs, which
    need a CUDA device: on a CPU (``accelerator: cpu``, or ``auto`` without CUDA) torch compiles
    them as ``mode: default`` would, without a word, so the recipe is accepted and this says so.
    """
    if mode not in ("reduce-overhead", "max-autotune"):
        return None
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return None
    device = "cpu" if accelerator in ("cpu", "auto") else accelerator
    return (f"trainer.compile.mode: {mode} captures the compiled model in CUDA graphs, which need a CUDA device; "
            f"this run trains on {device} (trainer.accelerator: {accelerator}), so it is compiled without CUDA graphs "
            "(as mode: default, or max-autotune-no-cudagraphs). Use trainer.compile: true on this device.")


def build_system(recipe: Recipe, preprocessor: Any = None):
    """Build ``(datamodule, module, builder)`` from a recipe (loads and preprocesses the data).

    ``preprocessor``: with ``data.stream``, a fitted :class:`~mtlframe.preprocess.Preprocessor`
    used instead of the prepared state (a checkpoint's, to evaluate it)."""
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule
    from mtlframe.module import MultiTaskModule
    from mtlframe.optim import check_sparse_support

    b = Builder(recipe)
    if recipe.config.data.stream is not None:  # Parquet directories streamed, never loaded
        from mtlframe.streamdata import StreamDataModule

        dm = StreamDataModule(recipe, b.dataset(), preprocessor)
    else:
        dm = RecDataModule(recipe, b.dataset())
    dm.prepare_data()
    dm.setup("fit")
    info = dm.feature_info()
    tasks = dm.task_specs()
    encoders = b.encoders(info)
    sampler = b.sampler(info, tasks, dm.table)
    dm.attach_encoders(encoders, tasks, sampler)
    model = b.model(encoders, tasks)
    model.init_output_bias(dm.label_priors())
    combiner = b.combiner(tasks)
    check_sparse_support(recipe, encoders, model, combiner)
    from mtlframe import __version__
    state = {"format": 1, "mtlframe_version": __version__, "recipe": recipe.resolved(),
             "preprocessor": dm.preprocessor.state_dict(), "providers": b.providers}
    module = MultiTaskModule(model, combiner, tasks, b.metrics(tasks), recipe.config.optimizer,
                             gradient_clip_val=recipe.config.trainer.gradient_clip_val
                             if combiner.requires_manual_backward else None,
                             checkpoint_state=state, nan_loss=recipe.config.trainer.nan_loss)
    module.set_ranking(dm.catalogue, sampler, seed=recipe.config.seed)
    schedule = b.scheduler()
    if schedule is not None:  # a monitored schedule (plateau) watches the checkpoint monitor
        has_val = len(dm.split_index["val"]) > 0
        monitor = _monitor(recipe, module, recipe.config.checkpoint.monitor, recipe.config.checkpoint.mode) \
            if has_val else None
        module.set_scheduler(*schedule, monitor=monitor, where=(recipe.source, recipe.lines))
    module.set_full_ranking(dm.ranking_split if dm.catalogue is not None else None)
    return dm, module, b


def _data_source(dm) -> str:
    """Where a data module's data comes from (its table's source; a stream's training directory)."""
    return dm.table.source if dm.table is not None else dm.source


#: recipe sections a resumed run may override (the model, data and optimizer are the checkpoint's)
RESUME_SECTIONS = ("trainer", "early_stopping")


@dataclass
class ResumeTarget:
    """What ``train --resume`` continues: the run folder, the checkpoint and the saved recipe."""

    run_dir: Path
    checkpoint: Path
    recipe: Recipe
    #: the checkpoint's position: ``{"epoch", "batches", "epoch_done", "step", "world_size"}`` (epoch
    #: 0-based; ``world_size`` None in checkpoints written before it was saved)
    position: dict[str, Any]
    status: dict[str, Any]
    #: the ``trainer`` section the run was started with (before the overrides)
    saved_trainer: dict[str, Any] = field(default_factory=dict)


def resume_target(path: str | Path, overrides: list[str] | None = None) -> ResumeTarget:
    """The checkpoint and recipe ``train --resume PATH`` continues.

    ``PATH`` is a run folder or one of its checkpoints. In a run folder: ``checkpoints/interrupted.ckpt``
    when ``status.json`` says the run was interrupted or the file is newer than ``last.ckpt`` (a
    resume of it that failed early), else ``checkpoints/last.ckpt`` (written at every validation, or every epoch without one). The
    recipe is the one saved in the checkpoint, with ``overrides`` of ``trainer.*`` and
    ``early_stopping.*`` only.

    Raises:
        CheckpointError: no such folder or file, no resumable checkpoint in the folder, or a
            checkpoint without resume state (written by an older mtlframe, or a copy such as ``best.ckpt``
            of a top-k run: pass ``last.ckpt``).
        RecipeError: an override outside ``trainer.*`` / ``early_stopping.*`` (each named), or an
            invalid value.
    """
    from mtlframe.recipe import apply_overrides, override_lines

    p = Path(path)
    if p.is_dir():
        run_dir = p
        status = _read_status(run_dir)
        found = [run_dir / "checkpoints" / n for n in ("interrupted.ckpt", "last.ckpt")
                 if (run_dir / "checkpoints" / n).is_file()]
        if len(found) == 2 and status.get("status") != "interrupted" \
                and found[0].stat().st_mtime_ns <= found[1].stat().st_mtime_ns:
            # an old Ctrl-C's checkpoint, since trained past; it stays first when a resume of it failed
            # before writing a newer last.ckpt (status.json then says failed, not interrupted)
            found = found[1:]
        if not found:
            held = sorted(c.name for c in (run_dir / "checkpoints").glob("*.ckpt")) \
                if (run_dir / "checkpoints").is_dir() else []
            raise CheckpointError(f"--resume {p}: the folder holds no checkpoints/last.ckpt"
                                  + (f" (it holds {', '.join(held)})" if held else "")
                                  + "; runs trained by this mtlframe write one at every validation. Pass a "
                                  "checkpoint file that has training state (--resume RUN/checkpoints/FILE.ckpt), "
                                  f"or start over: mtlframe train RECIPE --run-dir {run_dir} --overwrite (without "
                                  "--resume).")
        ckpt = found[0]
    else:
        problem = file_problem(p)
        if problem:
            raise CheckpointError(f"--resume {p} {problem}; pass a run folder (runs/<name>) or its "
                                  "checkpoints/last.ckpt.")
        ckpt = p
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        status = _read_status(run_dir)
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"--resume {ckpt} is not a checkpoint written by mtlframe train "
                              f"({type(exc).__name__}).") from None
    if not isinstance(saved, dict) or "mtlframe" not in saved:
        raise CheckpointError(f"--resume {ckpt} was not written by mtlframe train (no 'mtlframe' section).")
    if RESUME_KEY not in saved or "optimizer_states" not in saved:
        raise CheckpointError(f"--resume {ckpt} holds no training state to resume from (written by an earlier "
                              "mtlframe, or weights only); pass the run's checkpoints/last.ckpt or interrupted.ckpt.")
    position = {k: saved[RESUME_KEY][k] for k in ("epoch", "batches", "epoch_done", "step")}
    position["world_size"] = saved[RESUME_KEY].get("world_size")   # None: written before it was saved
    overrides = list(overrides or [])
    outside = [o.partition("=")[0].strip() for o in overrides
               if o.partition("=")[0].strip().split(".")[0].split("[")[0] not in RESUME_SECTIONS]
    source = f"{ckpt} (saved recipe)"
    if outside:
        raise RecipeError([(k, "cannot be changed when resuming: the data, model, combiner and optimizer of a resumed "
                               "run are its checkpoint's; only trainer.* (e.g. trainer.max_epochs to extend the "
                               "run) and early_stopping.* may be overridden. Start a new run to change it.")
                           for k in outside], source)
    data = apply_overrides(saved["mtlframe"]["recipe"], overrides)
    recipe = recipe_from_dict(data, source, override_lines({}, overrides))
    saved_trainer = dict(saved["mtlframe"]["recipe"].get("trainer") or {})
    del saved
    return ResumeTarget(run_dir, ckpt, recipe, position, status, saved_trainer)


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def _check_resume(target: ResumeTarget, first_process: bool = True) -> None:
    """Refuse a resume that has nothing to do: the checkpoint's epochs already reach ``max_epochs``
    (or its steps ``max_steps``), or the run is running in another process. That last check is the
    first process's only (``first_process``): the others of a multi-process resume find the
    ``status.json`` it has just marked running."""
    t = target.recipe.config.trainer
    pos = target.position
    done = pos["epoch"] + (1 if pos["epoch_done"] else 0)
    if first_process and target.status.get("status") == "running" and _pid_alive(target.status.get("pid")):
        raise MTLFrameError(f"{target.run_dir} is being trained by process {target.status.get('pid')} (status.json "
                            "says running); wait for it, or stop it, before resuming.")
    spec = target.recipe.config.optimizer.scheduler
    if spec is not None:
        from mtlframe.registry import get_registry

        from mtlframe.recipe import TrainerConfig

        schedule = get_registry().get("scheduler", spec["name"]).load()
        saved = TrainerConfig.model_validate(target.saved_trainer)   # its defaults filled in
        before = {"max_epochs": saved.max_epochs, "max_steps": saved.max_steps}
        if not getattr(schedule, "extendable", True) and before != {"max_epochs": t.max_epochs, "max_steps": t.max_steps}:
            raise RecipeError([("trainer.max_epochs" if before["max_epochs"] != t.max_epochs else "trainer.max_steps",
                                f"the run's schedule '{spec['name']}' (optimizer.scheduler) was built for its planned "
                                f"length (max_epochs {before['max_epochs']}, max_steps {before['max_steps']}) and "
                                "cannot go past it; resume without changing the length, or start a new run.")],
                              target.recipe.source, target.recipe.lines)
    limit = t.limit_train_batches
    if (not pos["epoch_done"] and isinstance(limit, int) and not isinstance(limit, bool)
            and limit < int(pos.get("batches", 0))):
        raise RecipeError([("trainer.limit_train_batches",
                            f"the checkpoint stopped after batch {pos['batches']} of epoch {pos['epoch'] + 1}, "
                            f"past the limit of {limit} batches per epoch asked for: that epoch cannot end at "
                            f"batch {limit}. Resume with trainer.limit_train_batches >= {pos['batches']}, or "
                            "without the override.")],
                          target.recipe.source, target.recipe.lines)
    devices = t.devices if isinstance(t.devices, int) and t.devices > 0 else \
        len(t.devices) if isinstance(t.devices, list) else None
    problem = None if devices is None else _world_size_problem(pos, t.num_nodes * devices)
    if problem:
        raise RecipeError([("trainer.devices", problem)], target.recipe.source, target.recipe.lines)
    if (done >= t.max_epochs and t.max_steps == -1) or (t.max_steps != -1 and pos["step"] >= t.max_steps):
        limit = (f"trainer.max_epochs {t.max_epochs}" if t.max_steps == -1 else f"trainer.max_steps {t.max_steps}")
        raise MTLFrameError(f"{target.checkpoint} has already trained {done} epoch(s), {pos['step']} steps, which "
                            f"reaches {limit}: nothing to resume. To train longer, raise it: "
                            f"mtlframe train --resume {target.run_dir} trainer.max_epochs={done + 5}")


def _world_size_problem(position: Mapping[str, Any], world_size: int) -> str | None:
    """Why a checkpoint written in the middle of an epoch by ``position["world_size"]`` processes cannot
    resume on ``world_size`` (each process's position is a count of its own batches, and its rows are
    every ``world_size``-th of the epoch's order: another count of processes would train some of the
    epoch's rows twice and others never); None when it can."""
    saved = position.get("world_size")
    if saved is None or position["epoch_done"] or saved == world_size:
        return None
    return (f"the checkpoint was written by {saved} process(es) in the middle of epoch {position['epoch'] + 1} "
            f"(after its batch {position['batches']}), and this resume has {world_size}: the rest of that "
            "epoch cannot be cut into the same rows. Resume with trainer.num_nodes x trainer.devices = "
            f"{saved}, or from a checkpoint written at an epoch's end (trainer.val_check_interval unset).")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def train(recipe: Recipe | None = None, run_dir: str | Path | None = None, *, progress: bool | None = None,
          callbacks: list[Any] | None = None, overwrite: bool = False, resume: str | Path | None = None,
          overrides: list[str] | None = None) -> TrainResult:
    """Train a recipe; evaluate the best checkpoint on the validation and test splits.

    Writes ``recipe.yaml``, ``status.json``, ``metrics.json``, ``checkpoints/best.ckpt`` (the best
    by ``checkpoint.monitor``; with ``checkpoint.save_top_k: k > 1`` a copy of the best of the k
    ``epoch=E-step=S.ckpt`` files kept), ``checkpoints/last.ckpt`` (the state after the latest
    validation, or epoch without one, for ``resume``) and logs into ``run_dir``. The metrics returned and saved
    are the best checkpoint's. ``callbacks`` are extra Lightning callbacks (the benchmark harness
    times training steps with one). Unless ``progress`` is False, the reason early stopping
    stopped and the best checkpoint's monitored value are printed.

    ``resume`` (a run folder or one of its checkpoints, see :func:`resume_target`) continues that run
    instead: ``recipe`` is None, the checkpoint's saved recipe is used with ``overrides`` of
    ``trainer.*`` / ``early_stopping.*`` only (``trainer.max_epochs=N`` extends a finished run), the
    run folder is the checkpoint's, and Lightning restores the weights, optimizer (dense and sparse
    states), schedulers, combiner state, loop counters and callbacks, plus the random states and the
    data position (the exact batch of a mid-epoch checkpoint). ``status.json`` says
    ``"resumed": {"from", "epoch", "batch", "step"}``; ``metrics.json`` is rewritten at the end.
    4 epochs straight and 2 + resume + 2 give bit-identical weights on CPU (on a GPU only with
    ``trainer.deterministic``; not tested there).

    Raises:
        MTLFrameError: ``run_dir`` is a file, or holds a run (finished, failed, interrupted or never
            finished) and ``overwrite`` is False.
        NoFiniteScoreError: every validation gave a NaN monitored value (a diverged model, or a
            metric undefined on the validation split); ``status.json`` says ``failed``.
        RunInterrupted: Ctrl-C; ``status.json`` says ``interrupted`` with the epoch, the step
            and the checkpoints saved.
        CheckpointError / RecipeError / DataError: with ``resume``, see :func:`resume_target`; also an
            override that lengthens a run whose schedule fixes its length (``onecycle``), and data
            that changed since the run started (the column named).
    """
    _quiet_lightning()
    import pytorch_lightning as pl
    from lightning_fabric.utilities.rank_zero import _get_rank

    target = None
    if resume is not None:
        if recipe is not None:
            raise MTLFrameError("train(resume=...) uses the recipe saved in the checkpoint: pass recipe=None "
                                "(and overrides=['trainer.max_epochs=N'] to change the trainer).")
        target = resume_target(resume, overrides)
        recipe = target.recipe
        if run_dir is not None and Path(run_dir).resolve() != target.run_dir.resolve():
            raise MTLFrameError(f"a resumed run continues in its own folder {target.run_dir}; drop --run-dir "
                                f"({run_dir}).")
        run_dir = target.run_dir
        _check_resume(target, first_process=(_get_rank() or 0) == 0)
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # the run's own folders
        # our training dataloader does resume at the batch (ResumeState + ColumnBatches.resume_at)
        warnings.filterwarnings("ignore", message=".*ended before the epoch ended and your dataloader is not resumable.*")
    elif recipe is None:
        raise MTLFrameError("train needs a recipe, or resume=RUN_DIR_OR_CHECKPOINT.")
    elif overrides:
        raise MTLFrameError("train(overrides=...) is for resume; apply overrides when loading the recipe "
                            "(load_recipe(path, overrides)).")
    cfg = recipe.config
    run_dir = Path(run_dir or default_run_dir(recipe))
    # DDP launches the other processes into this same function: only the first checks and cleans
    is_zero = (_get_rank() or 0) == 0
    if is_zero and target is None:
        _check_run_dir(run_dir, overwrite)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # a recipe or data error before training leaves no half-made run directory behind
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        dm, module, builder = build_system(recipe)
        if target is not None:  # the split is re-created from the data: it must be the data trained on
            whole = torch.load(target.checkpoint, map_location="cpu", weights_only=True, mmap=True)
            saved = whole["mtlframe"]
            changed = preprocessor_difference(saved["preprocessor"], dm.preprocessor.state_dict())
            if changed:
                raise DataError(f"the data at {_data_source(dm)} is not the data {target.checkpoint} was trained on: "
                                f"{changed}. A resumed run re-creates the split, so it needs the same rows.")
            # the weights Lightning will load (strictly, with a bare RuntimeError): checked here, by name
            # and shape, against the module as built (unsharded, as checkpoints hold the tables)
            expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
            given = whole["state_dict"]
            shapes = [f"size mismatch for {k}: the checkpoint's {tuple(given[k].shape)}, the model's {expected[k]}"
                      for k in expected if k in given and tuple(given[k].shape) != expected[k]]
            weights_error(target.checkpoint, saved, builder.providers, [k for k in expected if k not in given],
                          [k for k in given if k not in expected], shapes)
        if overwrite and is_zero and target is None:  # only now: a recipe or data error leaves the earlier run as it was
            _clear_run(run_dir)
        memory_plan.report(module.model, cfg, quiet=progress is False)
        if cfg.trainer.compile is not None:
            note = compile_device_note(cfg.trainer.compile.mode, cfg.trainer.accelerator)
            if note and is_zero:
                warnings.warn(note, UserWarning, stacklevel=2)
            module.model.compile_parts(**cfg.trainer.compile.model_dump())
        # a resume with overrides: the recipe it trains on now; the first process only (another one
        # failing at the same point removes the folder while it would still be written)
        if is_zero and (target is None or target.recipe.lines):
            (run_dir / "recipe.yaml").write_text(recipe.to_yaml(resolved=True), encoding="utf-8")

        has_val = len(dm.split_index["val"]) > 0
        if not has_val:
            val = cfg.data.split.val
            what = ("groups (group-kfold validates on whole groups)" if cfg.data.split.name == "group-kfold"
                    else f"rows ({len(dm.split_index['train']):,})")
            why = ("data.split.val is 0" if not val else f"the validation split is empty: data.split.val {val:g} "
                   f"of the training {what} rounds to none (raise data.split.val)")
            if cfg.data.stream is not None:
                why = ("data.stream.val is not set" if cfg.data.stream.val is None
                       else f"data.stream.val ({cfg.data.stream.val}) holds no rows")
            warnings.warn(f"{why}: there is no validation split, so the saved checkpoint is the last "
                          "epoch's and early stopping is off.", UserWarning, stacklevel=2)
        callbacks = list(callbacks or [])
        monitor, mode = _monitor(recipe, module, cfg.checkpoint.monitor, cfg.checkpoint.mode)
        top_k = cfg.checkpoint.save_top_k if has_val else 1
        ckpt_dir = run_dir / "checkpoints"
        ckpt = _checkpoint_callback(dirpath=str(ckpt_dir), filename="best" if top_k == 1 else "epoch={epoch}-step={step}",
                                    auto_insert_metric_name=False, monitor=monitor if has_val else None, mode=mode,
                                    save_top_k=top_k, enable_version_counter=False, save_last=True)
        status = _status_callback(run_dir)
        resumer = _resume_callback(dm)
        status.resume_state = resumer
        callbacks += [ckpt, status, resumer]
        if cfg.track.task_gradients is not None:  # off: no callback, no cost
            from mtlframe.explain.relations import TaskGradientCosine
            callbacks.append(TaskGradientCosine(cfg.track.task_gradients.every_n_steps))
        per_task: dict[str, Any] = {}
        if cfg.checkpoint.per_task and has_val:
            for tname in cfg.tasks:
                key, tmode = _monitor(recipe, module, tname, "auto")
                per_task[tname] = _checkpoint_callback(dirpath=str(ckpt_dir), filename=f"best-{tname}", monitor=key,
                                                       mode=tmode, save_top_k=1, enable_version_counter=False)
                callbacks.append(per_task[tname])
        stopper = None
        if cfg.early_stopping is not None and has_val:
            es = cfg.early_stopping
            if es.monitor in ("all", "any"):
                watched = [_Watched(*_monitor(recipe, module, t, "auto"), task=t, metric=recipe.task_metrics(t)[0])
                           for t in cfg.tasks]
            else:
                key, es_mode = _monitor(recipe, module, es.monitor, es.mode)
                parts = key.split("/")
                watched = [_Watched(key, es_mode, *(parts[1:] if len(parts) == 3 and parts[0] == "val" else ()))]
            policy = es.monitor if es.monitor in ("all", "any") else "one"
            stopper = _early_stopping_callback(watched, policy, es.patience, es.min_delta)
            callbacks.append(stopper)
        t = cfg.trainer
        show_progress = t.enable_progress_bar if progress is None else progress
        if show_progress and not _interactive_output():  # a file or a pipe: plain epoch lines, not a live bar
            callbacks.append(_epoch_lines_callback())
            show_progress = False
        elif show_progress:
            callbacks.append(_progress_bar())
        logger = _logger(recipe, run_dir)
        trainer_kwargs = dict(
            max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices,
            strategy=t.strategy, num_nodes=t.num_nodes, precision=t.precision,
            gradient_clip_val=None if module.gradient_clip_val else t.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches, log_every_n_steps=t.log_every_n_steps,
            deterministic=t.deterministic, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir),
            enable_progress_bar=show_progress,
            enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
            plugins=[_checkpoint_io()])
        if not has_val:
            trainer_kwargs["limit_val_batches"] = 0
        elif t.limit_val_batches is not None:
            trainer_kwargs["limit_val_batches"] = t.limit_val_batches
        for key in ("limit_train_batches", "val_check_interval"):
            if getattr(t, key) is not None:
                trainer_kwargs[key] = getattr(t, key)
        trainer = _make_trainer(recipe, trainer_kwargs)
    except BaseException:
        if created and is_zero:   # the folder is the first process's (it alone writes there before fit)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    resumed = None
    if target is not None:
        p = target.position
        resumed = {"from": str(target.checkpoint), "epoch": p["epoch"] + (2 if p["epoch_done"] else 1),
                   "batch": 0 if p["epoch_done"] else p["batches"], "step": p["step"],
                   "previous": target.status.get("status")}
        if progress is not False and is_zero:
            where = f"epoch {resumed['epoch']}" + (f", after its batch {resumed['batch']}" if resumed["batch"] else "")
            print(f"resuming {run_dir} from {target.checkpoint.name} at {where} (step {p['step']})", flush=True)
        if is_zero:  # written again at the end; until then the folder holds no finished run
            (run_dir / "metrics.json").unlink(missing_ok=True)
    if is_zero:
        _write_status(run_dir, {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "pid": os.getpid(), **({"resumed": resumed} if resumed else {})})
    report = progress is not False and trainer.is_global_zero
    # counted before fit: an encoder that shards its tables in configure_model (torchrec-embedding)
    # keeps them outside the module tree, so a count after fit would depend on the number of processes
    n_params = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    try:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=None if target is None else str(target.checkpoint))
        finally:  # however fit ends (an error raised before Lightning's own handling included), Ctrl-C is Python's again
            resumer._restore_handler()
        seconds = time.perf_counter() - start
        # evaluating a checkpoint file restores the callbacks' state saved in it: keep what fit ended with
        top_k_scores = {p: float(v) for p, v in ckpt.best_k_models.items()}
        best_train_score = None if ckpt.best_model_score is None else float(ckpt.best_model_score)
        per_task_best = {tname: {"checkpoint": cb.best_model_path or None, "monitor": cb.monitor,
                                 "best": None if cb.best_model_score is None else float(cb.best_model_score)}
                         for tname, cb in per_task.items()}
        if report and stopper is not None and stopper.message():
            print(stopper.message(), flush=True)
        best = ckpt.best_model_path or ckpt.last_model_path
        if not best:
            best = str(ckpt_dir / "best.ckpt")
            trainer.save_checkpoint(best)
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        # the weights in memory are the best checkpoint's when it was the last one written, at the
        # last step (one file kept): evaluate them as they are instead of reading the file back
        if (ckpt.save_top_k == 1 and ckpt.best_model_path and Path(best) == Path(ckpt.best_model_path)
                and getattr(ckpt, "saved_steps", {}).get(ckpt.best_model_path) == trainer.global_step):
            best_or_current = None
        else:
            best_or_current = best
        if Path(best).name != "best.ckpt":  # one of the top k: best.ckpt is a copy of it
            if trainer.is_global_zero:
                _copy_file(Path(best), ckpt_dir / "best.ckpt")
            best = str(ckpt_dir / "best.ckpt")
        best_value = None
        if has_val:
            trainer.validate(module, datamodule=dm, ckpt_path=best_or_current, verbose=False)
            metrics["val"] = module.last_scores.get("val", {})
            value = trainer.callback_metrics.get(monitor) if monitor.startswith("val/") else best_train_score
            best_value = None if value is None else float(value)
            if best_value is None or not math.isfinite(best_value):
                raise _no_finite_score(run_dir, monitor, metrics["val"], stopper, trainer.is_global_zero, best_value)
        if len(dm.split_index["test"]) > 0:
            trainer.test(module, datamodule=dm, ckpt_path=best_or_current, verbose=False)
            metrics["test"] = module.last_scores.get("test", {})
    except SystemExit:
        if status.interrupted is None:
            raise
        _restore_sigint()
        raise RunInterrupted(_interrupted_message(run_dir, status.interrupted)) from None
    except KeyboardInterrupt as exc:  # outside Lightning's own handling (between its calls)
        if isinstance(exc, RunInterrupted):
            raise
        info = {"status": "interrupted", "during": "the end of the run", "epoch": trainer.current_epoch,
                "max_epochs": trainer.max_epochs, "step": trainer.global_step}
        if trainer.is_global_zero:
            _write_status(run_dir, info)
        raise RunInterrupted(_interrupted_message(run_dir, info)) from None
    except BaseException as exc:
        if trainer.is_global_zero and not isinstance(exc, NoFiniteScoreError):
            _write_status(run_dir, {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        _finish_logger(logger)
    result = TrainResult(run_dir, metrics, best, n_params, seconds, builder.providers, trainer.is_global_zero)
    if trainer.is_global_zero:
        payload: dict[str, Any] = {
            "test": metrics.get("test", {}), "val": metrics.get("val", {}), "best_checkpoint": best,
            "num_parameters": n_params, "train_seconds": round(seconds, 3), "providers": builder.providers}
        if has_val:
            payload["monitor"] = {"name": monitor, "mode": mode, "best": best_value}
            if top_k != 1:
                payload["top_k_checkpoints"] = dict(sorted(top_k_scores.items(), key=lambda kv: kv[1],
                                                           reverse=mode == "max"))
        if per_task:
            payload["per_task_checkpoints"] = per_task_best
        if stopper is not None:
            payload["early_stopping"] = stopper.stopped
        if any(module.last_group_counts.get(s) for s in metrics):  # grouped metrics: groups seen / skipped
            payload["groups"] = {s: module.last_group_counts.get(s, {}) for s in metrics}
        (run_dir / "metrics.json").write_text(json.dumps(_finite(payload), indent=2), encoding="utf-8")
        _write_status(run_dir, {"status": "finished", "best_checkpoint": best, "epochs": trainer.current_epoch
                                if stopper is None or stopper.stopped is None else stopper.stopped["epoch"],
                                "step": trainer.global_step,
                                "early_stopping": None if stopper is None else stopper.stopped,
                                **({"resumed": resumed} if resumed else {})})
        if report and has_val:
            print(f"best checkpoint: {monitor} {_fmt(best_value)} ({best})", flush=True)
    return result


def _copy_file(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` (a hard link where the file system allows)."""
    tmp = dst.with_name(dst.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _restore_sigint() -> None:
    """Lightning ignores Ctrl-C after catching one; give Python's handler back (notebooks, compare)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted_message(run_dir: Path, info: Mapping[str, Any]) -> str:
    where = f"epoch {info.get('epoch')}" + (f"/{info['max_epochs']}" if info.get("max_epochs") else "")
    saved = [f"{k.replace('_', ' ')}: {info[k]}" for k in ("last_checkpoint", "best_checkpoint") if info.get(k)]
    return (f"interrupted (Ctrl-C) during {info.get('during', 'training')} at {where}, step {info.get('step')}. "
            + (f"{info['not_saved'].rstrip('.')}. " if info.get("not_saved") else "")
            + f"{run_dir} is marked interrupted (status.json)" + (f"; {'; '.join(saved)}" if saved else "")
            + (f". Continue it with: {info['resume']}" if info.get("resumable") else
               ". It holds no checkpoint to resume from: rerun with --overwrite (or another --run-dir) to start over")
            + ".")


def _no_finite_score(run_dir: Path, monitor: str, val: Mapping[str, Mapping[str, float]],
                     stopper: Any, write: bool, value: float | None = None) -> NoFiniteScoreError:
    """The error (and ``status.json``) of a run whose best monitored value is NaN or infinite."""
    bad = [f"val/{t}/{m} {v}" for t, per in val.items() for m, v in per.items() if not math.isfinite(v)]
    shown = "missing" if value is None else "NaN" if value != value else f"{value}"
    msg = (f"no validation of this run gave a finite {monitor}, so there is no best checkpoint: "
           f"the one kept has {monitor} {shown}"
           + (f" (not finite: {', '.join(bad)})" if bad else "") + ". A diverged model (a NaN or infinite loss: "
           "lower optimizer.lr, set trainer.gradient_clip_val) or a metric undefined on the validation split "
           "(one class, no labelled row: see the warnings above) causes it. "
           f"metrics.json is not written; {run_dir / 'status.json'} says so.")
    if stopper is not None and stopper.message():
        msg += f" ({stopper.message()})"
    if write:
        _write_status(run_dir, {"status": "failed", "reason": msg, "val": dict(val)})
    return NoFiniteScoreError(msg)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


def default_run_dir(recipe: Recipe) -> Path:
    stem = Path(recipe.source).stem if recipe.source else "recipe"
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------------
# Checkpoints: evaluate and predict
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    recipe: Recipe
    preprocessor: Any
    model: Any
    tasks: list
    encoders: list
    state: dict


def load_model_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], path: str | Path,
                       state: Mapping[str, Any], providers: Mapping[str, str]) -> None:
    """Load a checkpoint's model weights (keys without the ``model.`` prefix) into ``model``, built
    from the checkpoint's own recipe: every weight of the model must be in the checkpoint with its
    shape, and every weight of the checkpoint must have a place in the model. Buffers that are not
    saved (``persistent=False``) are rebuilt by the model and are not asked for.

    Raises:
        CheckpointError: a weight is missing (it would keep its random initial value), left over or
            of another shape; the keys are named (at most 6 of each), with the mtlframe and component
            versions that wrote the checkpoint next to the ones installed now (the likely cause: the
            model of the same recipe is built differently by another version).
    """
    try:
        result = model.load_state_dict(weights, strict=False)
        shapes: list[str] = []
    except RuntimeError as exc:  # a size mismatch (raised even when not strict)
        result = None
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        if not shapes:
            raise
    weights_error(path, state, providers, [] if result is None else list(result.missing_keys),
                  [] if result is None else list(result.unexpected_keys), shapes)


def weights_error(path: str | Path, state: Mapping[str, Any], providers: Mapping[str, str], missing: list[str],
                  unexpected: list[str], shapes: list[str]) -> None:
    """Raise the :class:`CheckpointError` of :func:`load_model_weights` when a weight is missing,
    left over or of another shape (nothing when all three lists are empty)."""
    if not (missing or unexpected or shapes):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    parts = ([f"the model built from its recipe has weights the checkpoint lacks (they would keep random "
              f"initial values): {some(missing)}"] if missing else []) + \
            ([f"the checkpoint has weights the model has no place for: {some(unexpected)}"] if unexpected else []) + \
            ([f"shapes differ: {some(shapes)}"] if shapes else [])
    from mtlframe import __version__
    saved = dict(state.get("providers") or {})
    changed = [f"{k}: {saved[k]} then, {v} now" for k, v in providers.items() if k in saved and saved[k] != v]
    written = state.get("mtlframe_version")
    if written and written != __version__:
        changed.insert(0, f"mtlframe {written} then, {__version__} now")
    cause = ("it was written by other versions: " + "; ".join(changed)) if changed else \
        "it was written by another version of mtlframe or of the plugin providing these components, or its " \
        "weights were edited or come from another recipe"
    raise CheckpointError(f"checkpoint {path} does not fit the model its saved recipe builds: {'; '.join(parts)}. "
                          f"Likely cause: {cause}. Load it with the versions that trained it "
                          "(`mtlframe train` records them as providers in the checkpoint), or train again.")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model of an mtlframe checkpoint (recipe + preprocessor + weights inside).

    Raises:
        CheckpointError: the file is missing or was not written by mtlframe; its weights do not fit
            the model its recipe builds (see :func:`load_model_weights`).
    """
    from mtlframe.build import Builder
    from mtlframe.features import TaskSpec
    from mtlframe.preprocess import Preprocessor

    p = Path(path)
    problem = file_problem(p)
    if problem:
        inside = [c for c in (p / "checkpoints" / "best.ckpt", p / "best.ckpt") if c.is_file()]
        hint = f"pass {inside[0]}" if inside else "pass the best.ckpt of a run (runs/<name>/checkpoints/best.ckpt)"
        raise CheckpointError(f"checkpoint {p} {problem}; {hint}.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p} is not a PyTorch checkpoint written by `mtlframe train` "
                              f"({type(exc).__name__}); pass runs/<run>/checkpoints/best.ckpt.") from None
    state = ckpt.get("mtlframe") if isinstance(ckpt, dict) else None
    if not state:
        raise CheckpointError(f"{p} was not written by mtlframe (no 'mtlframe' section); train with `mtlframe train`.")
    recipe = recipe_from_dict(state["recipe"], f"{p} (saved recipe)")
    pre = Preprocessor.from_state_dict(state["preprocessor"])
    b = Builder(recipe)
    tasks = []
    for tname, task in recipe.config.tasks.items():
        classes = tuple(pre.classes.get(tname, ()))
        tasks.append(TaskSpec(tname, task.type, task.label, task.weight, tuple(recipe.task_metrics(tname)),
                              num_classes=len(classes) if task.type == "multiclass" else 1, classes=classes))
    encoders = b.encoders(pre.feature_info())
    model = b.model(encoders, tasks)
    weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_model_weights(model, weights, p, state, b.providers)
    model.eval()
    return LoadedCheckpoint(recipe, pre, model, tasks, encoders, state)


def predict_frame(loaded: LoadedCheckpoint, frame, batch_size: int = 8192, source: str = "input",
                  report: dict | None = None):
    """Predict every task for the rows of ``frame`` (a pandas DataFrame).

    Returns a DataFrame with one column per task: probability (binary), value (regression) or
    the predicted class plus one ``<task>_p_<class>`` probability column per class (multiclass),
    one row per input row (same index), never an empty cell.

    The inputs go through the checkpoint's preprocessor: a missing numeric value is an error
    unless the recipe declared a fill (``data.fill_missing``), a value beyond float32 an error
    unless it declared a ``data.clip`` range; categorical values unseen in training take the
    out-of-vocabulary id. ``report`` (a dict, when given) receives what happened, per feature:
    ``{"oov": {col: {"rows", "oov", "missing"}}, "filled": {col: n}, "clipped": {col: n},
    "unseen_classes": {task: {class: n}}}`` (see :func:`predict_warnings`); without it, the same
    is issued as warnings.

    The three steps are :func:`prepare_rows`, :func:`model_predictions` and
    :func:`prediction_table` (``mtlframe serve`` runs the second on several requests at once).

    Raises:
        DataError: ``frame`` has no rows; a column the model needs is missing (named), cannot be
            parsed, or holds a value the checkpoint's preprocessor refuses (column and rows named).
        CheckpointError: the model gives a non-finite prediction (its weights are not finite);
            the task and rows are named.
    """
    batch_cols, rep = prepare_rows(loaded, frame, source)
    result = prediction_table(loaded, model_predictions(loaded, batch_cols, batch_size), frame.index, source)
    if report is not None:
        report.update(rep)
    else:
        for line in predict_warnings(rep):
            warnings.warn(line, UserWarning, stacklevel=2)
    return result


def prepare_rows(loaded: LoadedCheckpoint, frame, source: str = "input",
                 transformed: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(model-ready columns [N, ...], report)`` of the raw rows of ``frame`` through the
    checkpoint's preprocessor and encoders (the first step of :func:`predict_frame`; ``report`` as
    there). ``transformed`` (a dict, when given) receives the preprocessor's columns (categorical
    ids: ``0`` = out of vocabulary or missing). Not thread-safe: the preprocessor keeps its last report.

    Raises:
        DataError: as :func:`predict_frame`.
    """
    from mtlframe.datamodule import materialize

    if len(frame) == 0:
        raise DataError(f"{source} has a header and no data rows: nothing to predict; pass a file with one row "
                        "per prediction.")
    pre = loaded.preprocessor
    cols = pre.transform(frame, source, with_labels=False)
    rep = dict(pre.reports.get("data", {}))
    for lab in pre.labels:  # labels in the input: classes the model never saw
        if lab.type == "multiclass" and lab.column in frame.columns:
            unseen = pre.unseen_classes(frame[lab.column], lab)
            if unseen:
                rep.setdefault("unseen_classes", {})[lab.task] = unseen
    if transformed is not None:
        transformed.update(cols)
    return materialize(loaded.encoders, [], cols), rep


def model_predictions(loaded: LoadedCheckpoint, batch_cols: Mapping[str, torch.Tensor],
                      batch_size: int = 8192) -> dict[str, torch.Tensor]:
    """``{task: predictions}`` (float32 on the CPU: ``[N]``, multiclass ``[N, C]`` probabilities,
    :func:`~mtlframe.tasks.to_prediction`) of model-ready columns, ``batch_size`` rows per forward
    pass on the device the caller put the model on."""
    from mtlframe.batching import ColumnBatches
    from mtlframe.tasks import to_prediction

    outs: dict[str, list[torch.Tensor]] = {t.name: [] for t in loaded.tasks}
    device = next(loaded.model.parameters(), torch.empty(0)).device  # where the caller put the model
    with torch.inference_mode():
        for batch in ColumnBatches(dict(batch_cols), batch_size):
            if device.type != "cpu":
                batch = {k: v.to(device) for k, v in batch.items()}
            out = loaded.model(batch)
            for t in loaded.tasks:
                outs[t.name].append(to_prediction(t.type, out[t.name]).float().cpu())
    return {t: torch.cat(v) if v else torch.zeros(0) for t, v in outs.items()}


def check_finite_predictions(source: str, task: str, values: np.ndarray, offset: int = 0) -> None:
    """Refuse a task's non-finite predictions ``values`` (``[N]`` or ``[N, C]``; rows numbered from
    ``offset + 1``).

    Raises:
        CheckpointError: naming ``source``, the task, the count and the first rows.
    """
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        rows = ", ".join(str(offset + int(i) + 1) for i in np.flatnonzero(bad)[:5])
        raise CheckpointError(f"{source}: task '{task}' gives no finite prediction for {int(bad.sum())} of "
                              f"{len(values)} rows (rows {rows}{' ...' if bad.sum() > 5 else ''}); the inputs are "
                              "finite, so the checkpoint's weights are not: retrain (see the run's train/loss).")


def prediction_table(loaded: LoadedCheckpoint, predictions: Mapping[str, torch.Tensor], index, source: str = "input"):
    """The :func:`predict_frame` table of :func:`model_predictions` (rows labelled ``index``).

    Raises:
        CheckpointError: a non-finite prediction (task and rows named).
    """
    import pandas as pd

    result = pd.DataFrame(index=index)
    for t in loaded.tasks:
        values = predictions[t.name].numpy()
        check_finite_predictions(source, t.name, values)
        if t.type == "multiclass":
            result[t.name] = [t.classes[i] for i in values.argmax(1)] if len(values) else []
            for i, c in enumerate(t.classes):
                result[f"{t.name}_p_{c}"] = values[:, i] if len(values) else []
        else:
            result[t.name] = values
    return result


def predict_warnings(report: Mapping[str, Any]) -> list[str]:
    """One line per feature with out-of-vocabulary or filled values, per clipped feature, per
    sequence feature with truncated rows and per task with classes unseen in training, from a
    :func:`predict_frame` report."""
    lines = []
    for col, r in report.get("oov", {}).items():
        if r["oov"]:
            lines.append(f"feature '{col}': {r['oov']} of {r['rows']} rows ({r['oov'] / max(r['rows'], 1):.1%}) hold "
                         f"values unseen in training (out-of-vocabulary)"
                         + (f", {r['missing']} are empty" if r["missing"] else ""))
    for col, r in report.get("truncated", {}).items():
        if r["truncated"]:
            from mtlframe.datamodule import truncation_line

            lines.append(truncation_line(col, r["truncated"], r["rows"], r["max_len"]))
    for col, n in report.get("filled", {}).items():
        lines.append(f"numeric feature '{col}': {n} missing value(s) filled (data.fill_missing of the checkpoint)")
    for col, n in report.get("clipped", {}).items():
        lines.append(f"numeric feature '{col}': {n} value(s) clipped (data.clip of the checkpoint)")
    for task, unseen in report.get("unseen_classes", {}).items():
        shown = ", ".join(f"{c!r} ({n} row{'s' if n != 1 else ''})" for c, n in unseen.items())
        lines.append(f"task '{task}': the input's label column holds classes unseen in training: {shown}")
    return lines


def keep_columns(predictions, frame, keep: list[str], source: str = "input"):
    """``predictions`` with the input columns ``keep`` in front, in the order given.

    A kept column keeps its name; a prediction column of the same name (a kept ``rating`` beside
    the task ``rating``) is renamed ``<name>_pred`` (``rating_pred``).

    Raises:
        DataError: a ``keep`` column is not in ``frame`` (closest names given), or is listed twice.
    """
    import pandas as pd

    from mtlframe.errors import closest

    twice = sorted({c for c in keep if keep.count(c) > 1})
    if twice:
        raise DataError(f"--keep lists {', '.join(map(repr, twice))} more than once; list each column once.")
    for col in keep:
        if col not in frame.columns:
            near = closest(col, frame.columns)
            raise DataError(f"--keep column '{col}' is not in {source}"
                            + near_hint(near)
                            + f" Columns: {', '.join(map(str, frame.columns))}.")
    renamed = {}
    for c in predictions.columns:
        if c in keep:
            new = f"{c}_pred"
            while new in keep or new in predictions.columns:
                new += "_pred"
            renamed[c] = new
    kept = pd.DataFrame({c: frame[c].to_numpy() for c in keep}, index=predictions.index)
    return pd.concat([kept, predictions.rename(columns=renamed)], axis=1)


def read_table(path: str | Path):
    """Read a CSV or Parquet file by extension.

    Raises:
        DataError: missing file or unsupported extension.
    """
    import pandas as pd

    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise DataError(f"input file {p} {problem}; pass a .csv or .parquet file.")
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            return pd.read_parquet(p)
        except ImportError as exc:
            raise DataError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    if p.suffix.lower() in (".csv", ".gz", ".txt", ".tsv"):
        try:
            return pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",", low_memory=False)
        except pd.errors.EmptyDataError:
            raise DataError(f"input file {p} is empty; it needs a header row with the model's feature "
                            "columns and one row per prediction.") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"input file {p} is not a readable CSV: {exc}") from None
    raise DataError(f"{p}: unsupported file type '{p.suffix}'; use .csv or .parquet.")


def write_table(frame, path: str | Path) -> None:
    """Write ``frame`` as Parquet (``.parquet``, ``.pq``) or CSV (any other name).

    Raises:
        DataError: ``path`` is a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(f"output {p} is a folder, not a file; pass a file name such as {p / 'predictions.csv'}.")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(p, index=False)
    else:
        frame.to_csv(p, index=False)


#: what ``--accelerator`` accepts (``gpu`` and ``cuda`` are the same)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def resolve_device(accelerator: str = "auto") -> torch.device:
    """The torch device for an ``--accelerator`` choice: ``auto`` picks a CUDA GPU, else Apple's
    MPS, else the CPU; ``gpu``/``cuda`` and ``mps`` must be present.

    Raises:
        MTLFrameError: an unknown choice, or an accelerator this machine does not have (one line).
    """
    if accelerator not in ACCELERATORS:
        raise MTLFrameError(f"--accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}.")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise MTLFrameError(f"--accelerator {accelerator}: torch sees no CUDA GPU on this machine "
                            "(torch.cuda.is_available() is False); use --accelerator cpu, or auto.")
    if accelerator == "mps" and not has_mps:
        raise MTLFrameError("--accelerator mps: Apple's MPS backend is not available on this machine; "
                            "use --accelerator cpu, or auto.")
    return torch.device("cuda" if accelerator in ("gpu", "cuda") else accelerator)


def evaluate(checkpoint: str | Path, split: str = "test", *, accelerator: str = "auto",
             data_path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Re-create the recipe's data split and evaluate a checkpoint on it.

    Args:
        checkpoint: an mtlframe checkpoint (``runs/<run>/checkpoints/best.ckpt``).
        split: ``test`` or ``val``.
        accelerator: ``auto`` (a GPU when there is one), ``cpu``, ``gpu``/``cuda`` or ``mps``.
        data_path: where the data is now (replaces the saved ``data.dataset.path``: data moved
            since training).
        overrides: ``data.*`` overrides of the saved recipe (``data.dataset.path=...``,
            ``data.eval_batch_size=...``); the model settings are the checkpoint's.

    Returns ``{task: {metric: value}}``.

    Raises:
        MTLFrameError: an override outside ``data.``, or an accelerator this machine lacks.
        DataError: the saved data path does not exist (moved: pass ``data_path``); an empty split.
    """
    _quiet_lightning()
    device = resolve_device(accelerator)
    loaded = load_checkpoint(checkpoint)
    dm, module = rebuild_system(checkpoint, loaded, data_path=data_path, overrides=overrides)
    trainer = _make_eval_trainer(device)
    if len(dm.split_index[split]) == 0 and loaded.recipe.config.data.stream is not None:
        raise DataError(f"the recipe saved in {checkpoint} streams no {split} rows (data.stream.{split} is not set "
                        f"or holds no rows); pass one: mtlframe evaluate ... data.stream.{split}=DIR.")
    if len(dm.split_index[split]) == 0:
        raise DataError(f"the recipe saved in {checkpoint} has an empty {split} split "
                        f"(data.split.{split}: 0); evaluate another split, or retrain with a {split} fraction.")
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader}[split]()
    try:
        if split == "val":
            trainer.validate(module, dataloaders=loader, verbose=False)
        else:
            trainer.test(module, dataloaders=loader, verbose=False)
    except SystemExit:  # Lightning turns Ctrl-C into exit status 1
        if trainer.state.status.value != "interrupted":
            raise
        _restore_sigint()
        raise KeyboardInterrupt(f"interrupted (Ctrl-C) while evaluating {checkpoint} on the {split} split") from None
    return module.last_scores[split]


def rebuild_system(checkpoint: str | Path, loaded: LoadedCheckpoint, *, command: str = "evaluate",
                   data_path: str | Path | None = None, overrides: list[str] | None = None,
                   sections: tuple[str, ...] = ("data",)):
    """The data and model of a checkpoint's training run, re-created: ``(datamodule, module)``.

    The saved recipe (with ``overrides`` of the ``sections`` given, and ``data_path`` replacing
    ``data.dataset.path``) loads and splits the data again; the preprocessor fitted again must
    equal the checkpoint's (the same rows, so the same split); the module's model gets the
    checkpoint's weights. ``command`` names the caller in messages.

    Raises:
        MTLFrameError: an override outside ``sections``.
        DataError: the saved data path does not exist (moved: pass ``data_path``); the data is not
            the data the checkpoint was trained on (the column that changed is named).
    """
    import copy

    from mtlframe.recipe import apply_overrides, override_lines

    recipe = loaded.recipe
    overrides = list(overrides or [])
    outside = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in sections
               or "." not in o.partition("=")[0]]
    if outside:
        raise MTLFrameError(f"{command} takes overrides of {' and '.join(s + '.*' for s in sections)} only (the model "
                            f"is the checkpoint's): {', '.join(outside)}")
    if data_path is not None:
        overrides.append(f"data.dataset.path={Path(data_path).resolve()}")
    if overrides:
        data = copy.deepcopy(recipe.data)
        if data_path is not None:  # a path is not YAML-parsed (':' or '#' in it)
            data = apply_overrides(data, overrides[:-1])
            data.setdefault("data", {}).setdefault("dataset", {})["path"] = str(Path(data_path).resolve())
        else:
            data = apply_overrides(data, overrides)
        recipe = recipe_from_dict(data, recipe.source, override_lines({}, overrides))
    trained_path = loaded.recipe.config.data.dataset.get("path")
    saved_path = recipe.config.data.dataset.get("path")
    if isinstance(saved_path, str) and saved_path and not Path(saved_path).exists():
        if saved_path != trained_path:  # the path given on the command line
            trained_on = (f"data at {trained_path}" if trained_path else
                          f"dataset '{loaded.recipe.config.data.dataset.get('name')}' without data.dataset.path "
                          "(its own data): leave --data-path out")
            raise DataError(f"the data path given to {command}, {saved_path}, does not exist; {checkpoint} was "
                            f"trained on {trained_on}.")
        raise DataError(f"{checkpoint} was trained on data at {saved_path}, which does not exist (moved or "
                        f"deleted?); point {command} at it: --data-path NEW_PATH (or data.dataset.path=NEW_PATH).")
    pre = None
    if recipe.config.data.stream is not None:
        # the splits are directories: the checkpoint's own preprocessing applies as it is (the
        # prepared state may have been refitted for another run since, or be absent)
        from mtlframe.preprocess import Preprocessor

        pre = Preprocessor.from_state_dict(loaded.state["preprocessor"])
    dm, module, _ = build_system(recipe, preprocessor=pre)
    changed = preprocessor_difference(loaded.state["preprocessor"], dm.preprocessor.state_dict())
    if changed:  # the split is re-created from the data: it must be the data the model was trained on
        raise DataError(f"the data at {_data_source(dm)} is not the data {checkpoint} was trained on: {changed}. "
                        f"{command} re-creates the training run's split, so it needs the same rows; to score "
                        "new rows, use mtlframe predict (it applies the checkpoint's preprocessing).")
    module.model.load_state_dict(loaded.model.state_dict())
    return dm, module

def preprocessor_difference(saved: Mapping[str, Any], fitted: Mapping[str, Any]) -> str | None:
    """What differs between a checkpoint's preprocessor state and one fitted again on today's data
    (vocabularies, numeric statistics, classes, fills), as a phrase naming the column; ``None`` if
    they are the same."""
    for part, what in (("vocab", "the vocabulary of"), ("stats", "the training mean / std of"),
                       ("classes", "the classes of"), ("fill", "the fill value of"),
                       ("multi_len", "the longest list of"), ("hash_report", "the distinct hashed values of")):
        a, b = saved.get(part) or {}, fitted.get(part) or {}
        for col in sorted(set(a) | set(b)):
            if col not in a or col not in b:
                return f"{what} column '{col}' is {'new' if col not in a else 'gone'}"
            x, y = a[col], b[col]
            if torch.is_tensor(x) or torch.is_tensor(y):
                same = torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and bool(torch.equal(x, y))
            else:
                same = list(x) == list(y) if isinstance(x, (list, tuple)) else x == y
            if not same:
                size = (f" ({len(x):,} values when trained, {len(y):,} now)"
                        if part == "vocab" and len(x) != len(y) else "")
                return f"{what} column '{col}' changed{size}"
    return None


def _make_eval_trainer(device: torch.device):
    """A one-device Lightning trainer for evaluation on ``device``."""
    import pytorch_lightning as pl

    return pl.Trainer(accelerator=device.type, devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, use_distributed_sampler=False)

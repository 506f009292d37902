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

from mtlframe.errors import CheckpointError, DataError, MTLFrameError, RecipeError
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
    # metric values are synced by torchmetrics before logging; Lightning cannot know that
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*isinstance.*treespec.*")
    # MultiTaskModule moves its own batches (flat dicts of tensors), whichever data module feeds them
    warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device` in `LightningModule`.*")


def _monitor(recipe: Recipe, module, monitor: str, mode: str) -> tuple[str, str]:
    if monitor == "auto":
        return "val/score", "max"
    if mode != "auto":
        return monitor, mode
    parts = monitor.split("/")
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


def _saved_step_callback():
    """A callback that remembers the global step of the last checkpoint written (``.step``)."""
    import pytorch_lightning as pl

    class SavedStep(pl.Callback):
        step: int | None = None

        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            self.step = int(checkpoint.get("global_step", -1))

    return SavedStep()


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
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start, self._step = time.perf_counter(), trainer.global_step
            self._loss, self._batches = None, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            if isinstance(loss, torch.Tensor):  # summed on the device: no synchronization per step
                self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
                self._batches += 1

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            m = trainer.callback_metrics
            values = [f"train/loss {float(self._loss) / self._batches:.4f}"] if self._batches else []
            keys = [k for k in ("val/score",) if k in m]
            keys += sorted(k for k in m if k.startswith("val/") and k != "val/score" and k.count("/") == 2)
            values = "  ".join(values + [f"{k} {float(m[k]):.4f}" for k in keys])
            total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
            print(f"epoch {trainer.current_epoch + 1}{total}  {trainer.global_step - self._step} steps  "
                  f"{time.perf_counter() - self._start:.1f} s  {values}", flush=True)

        def on_train_end(self, trainer, pl_module) -> None:
            from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

            if not trainer.is_global_zero:
                return
            for cb in trainer.callbacks:
                if isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0:
                    print(f"early stopping after epoch {cb.stopped_epoch + 1}: {cb.monitor} did not improve for "
                          f"{cb.patience} epoch(s)", flush=True)
                if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_score is not None:
                    print(f"best checkpoint: {cb.monitor} {float(cb.best_model_score):.4f}", flush=True)

    return EpochLines()


def _make_trainer(recipe: Recipe, kwargs: dict[str, Any]):
    """``pl.Trainer(**kwargs)``; Lightning's refusals of the recipe's ``trainer`` settings (no GPU for
    ``accelerator: gpu``, too many ``devices``, an unknown ``strategy``) become recipe errors."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        return pl.Trainer(**kwargs)
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
    return RecipeError([(where, f"Lightning cannot set up this machine with {settings}: {text.strip()} "
                                "(`accelerator: auto` and `devices: auto` pick what the machine has)")],
                       recipe.source, recipe.lines)


def _finish_logger(logger) -> None:
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb
        wandb.finish()
        wandb.teardown()  # offline finish() may return before the run file is complete


def build_system(recipe: Recipe):
    """Build ``(datamodule, module, builder)`` from a recipe (loads and preprocesses the data)."""
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule
    from mtlframe.module import MultiTaskModule
    from mtlframe.optim import check_sparse_support

    b = Builder(recipe)
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
    return dm, module, b


def train(recipe: Recipe, run_dir: str | Path | None = None, *, progress: bool | None = None,
          callbacks: list[Any] | None = None, overwrite: bool = False) -> TrainResult:
    """Train a recipe; evaluate the best checkpoint on the validation and test splits.

    Writes ``recipe.yaml``, ``metrics.json``, ``checkpoints/best.ckpt`` and logs into ``run_dir``.
    ``callbacks`` are extra Lightning callbacks (the benchmark harness times training steps with one).

    Raises:
        MTLFrameError: ``run_dir`` is a file, or holds a finished run and ``overwrite`` is False.
    """
    _quiet_lightning()
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    cfg = recipe.config
    run_dir = Path(run_dir or default_run_dir(recipe))
    if run_dir.exists() and not run_dir.is_dir():
        raise MTLFrameError(f"--run-dir {run_dir} is a file; pass a folder (it is created if missing).")
    if (run_dir / "metrics.json").exists() and not overwrite:
        raise MTLFrameError(f"{run_dir} already holds a finished run (metrics.json); pass another --run-dir, "
                            "or --overwrite to replace it.")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # a recipe or data error before training leaves no half-made run directory behind
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        dm, module, builder = build_system(recipe)
        if cfg.trainer.compile is not None:
            module.model.compile_parts(**cfg.trainer.compile.model_dump())
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(resolved=True), encoding="utf-8")

        has_val = len(dm.split_index["val"]) > 0
        if not has_val:
            warnings.warn("data.split.val is 0: there is no validation split, so the saved checkpoint is the last "
                          "epoch's and early stopping is off.", UserWarning, stacklevel=2)
        callbacks = list(callbacks or [])
        monitor, mode = _monitor(recipe, module, cfg.checkpoint.monitor, cfg.checkpoint.mode)
        ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best",
                               monitor=monitor if has_val else None, mode=mode,
                               save_top_k=cfg.checkpoint.save_top_k if has_val else 1, enable_version_counter=False)
        saved = _saved_step_callback()
        callbacks += [ckpt, saved]
        if cfg.early_stopping is not None and has_val:
            es_monitor, es_mode = _monitor(recipe, module, cfg.early_stopping.monitor, cfg.early_stopping.mode)
            callbacks.append(EarlyStopping(monitor=es_monitor, mode=es_mode, patience=cfg.early_stopping.patience,
                                           min_delta=cfg.early_stopping.min_delta))
        t = cfg.trainer
        show_progress = t.enable_progress_bar if progress is None else progress
        if show_progress and not _interactive_output():  # a file or a pipe: plain epoch lines, not a live bar
            callbacks.append(_epoch_lines_callback())
            show_progress = False
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
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - start
        best = ckpt.best_model_path or ckpt.last_model_path
        if not best:
            best = str(run_dir / "checkpoints" / "best.ckpt")
            trainer.save_checkpoint(best)
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        # the weights in memory are the best checkpoint's when it was the last one written, at the
        # last step (one file kept): evaluate them as they are instead of reading the file back
        if (ckpt.save_top_k == 1 and ckpt.best_model_path and saved.step == trainer.global_step
                and Path(best) == Path(ckpt.best_model_path)):
            best_or_current = None
        else:
            best_or_current = best
        if has_val:
            trainer.validate(module, datamodule=dm, ckpt_path=best_or_current, verbose=False)
            metrics["val"] = module.last_scores.get("val", {})
        if len(dm.split_index["test"]) > 0:
            trainer.test(module, datamodule=dm, ckpt_path=best_or_current, verbose=False)
            metrics["test"] = module.last_scores.get("test", {})
    finally:
        _finish_logger(logger)
    n_params = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    result = TrainResult(run_dir, metrics, best, n_params, seconds, builder.providers, trainer.is_global_zero)
    if trainer.is_global_zero:
        payload = {"test": metrics.get("test", {}), "val": metrics.get("val", {}),
                   "best_checkpoint": best, "num_parameters": n_params, "train_seconds": round(seconds, 3),
                   "providers": builder.providers}
        (run_dir / "metrics.json").write_text(json.dumps(_finite(payload), indent=2), encoding="utf-8")
    return result


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


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model of an mtlframe checkpoint (recipe + preprocessor + weights inside).

    Raises:
        CheckpointError: the file is missing or was not written by mtlframe.
    """
    from mtlframe.build import Builder
    from mtlframe.features import TaskSpec
    from mtlframe.preprocess import Preprocessor

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the best.ckpt of a run "
                              "(runs/<name>/checkpoints/best.ckpt).")
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
    model.load_state_dict(weights, strict=False)
    model.eval()
    return LoadedCheckpoint(recipe, pre, model, tasks, encoders, state)


def predict_frame(loaded: LoadedCheckpoint, frame, batch_size: int = 8192, source: str = "input"):
    """Predict every task for the rows of ``frame`` (a pandas DataFrame).

    Returns a DataFrame with one column per task: probability (binary), value (regression) or
    the predicted class plus one ``<task>_p_<class>`` probability column per class (multiclass).

    Raises:
        DataError: a column the model needs is missing (named), or cannot be parsed.
    """
    import pandas as pd

    from mtlframe.batching import ColumnBatches
    from mtlframe.datamodule import materialize
    from mtlframe.tasks import to_prediction

    cols = loaded.preprocessor.transform(frame, source, with_labels=False)
    batch_cols = materialize(loaded.encoders, [], cols)
    outs: dict[str, list[torch.Tensor]] = {t.name: [] for t in loaded.tasks}
    with torch.inference_mode():
        for batch in ColumnBatches(batch_cols, batch_size):
            out = loaded.model(batch)
            for t in loaded.tasks:
                outs[t.name].append(to_prediction(t.type, out[t.name]).float())
    result = pd.DataFrame(index=frame.index)
    for t in loaded.tasks:
        values = torch.cat(outs[t.name]).numpy() if outs[t.name] else np.zeros((0,))
        if t.type == "multiclass":
            result[t.name] = [t.classes[i] for i in values.argmax(1)] if len(values) else []
            for i, c in enumerate(t.classes):
                result[f"{t.name}_p_{c}"] = values[:, i] if len(values) else []
        else:
            result[t.name] = values
    return result


def read_table(path: str | Path):
    """Read a CSV or Parquet file by extension.

    Raises:
        DataError: missing file or unsupported extension.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file {p} does not exist.")
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
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(p, index=False)
    else:
        frame.to_csv(p, index=False)


def evaluate(checkpoint: str | Path, split: str = "test") -> dict[str, dict[str, float]]:
    """Re-create the recipe's data split and evaluate a checkpoint on it.

    Returns ``{task: {metric: value}}``.
    """
    _quiet_lightning()
    import pytorch_lightning as pl

    loaded = load_checkpoint(checkpoint)
    recipe = loaded.recipe
    dm, module, _ = build_system(recipe)
    module.model.load_state_dict(loaded.model.state_dict())
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False)
    if len(dm.split_index[split]) == 0:
        raise DataError(f"the recipe saved in {checkpoint} has an empty {split} split "
                        f"(data.split.{split}: 0); evaluate another split, or retrain with a {split} fraction.")
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader}[split]()
    if split == "val":
        trainer.validate(module, dataloaders=loader, verbose=False)
    else:
        trainer.test(module, dataloaders=loader, verbose=False)
    return module.last_scores[split]

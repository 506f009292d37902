"""``mtlframe tune``: hyperparameter search over a recipe with Optuna.

    mtlframe tune recipes/movielens_mmoe.yaml --trials 40 --output runs/tune-ml

The search space is the recipe's ``tune:`` section (or the same mapping in a side file,
``--space FILE``): dotted recipe keys (the same as command-line overrides) with a range or a
list of choices::

    tune:
      metric: val/rating/rmse      # auto: checkpoint.monitor (val/score by default)
      direction: auto              # from the metric: minimize for rmse, maximize for auc
      space:
        optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.backbone.num_experts: {type: int, low: 2, high: 8, step: 2}
        model.backbone.name: {type: categorical, choices: [mmoe, ple]}

Every key and every value a trial may take (``low``, ``high`` and each choice) is validated as a
recipe before the first trial (:func:`space_problems`, also run by ``recipe validate``); all the
problems are listed in one :class:`~mtlframe.errors.RecipeError` at ``tune.space.<key>``.

Each trial is an ordinary recipe (the base recipe without its ``tune:`` section, with the
sampled values as overrides) trained by :func:`mtlframe.run.train` into ``OUTPUT/trials/
trial-NNNN``. Its objective is the metric's value at the trial's best checkpoint on the
validation split (never the test split). Sampler: Optuna's TPE (Bergstra et al., NeurIPS 2011),
seeded by the recipe's ``seed`` plus the number of trials already in the study (so a resumed
study does not repeat its first random trials). Pruner: Optuna's ``MedianPruner`` on the value
reported after every validation epoch by :class:`PruningCallback` (optuna-integration's
``PyTorchLightningPruningCallback`` imports the ``lightning`` package, not ``pytorch_lightning``,
so mtlframe has its own).

The study lives in a SQLite file (``--study``, default ``OUTPUT/study.db``): running the same
command again continues it, and its finished trials (complete, pruned or failed in training)
count toward ``--trials``. A trial whose training fails (a diverged model, :class:`~mtlframe.run.
NoFiniteScoreError`, any error of the trial's recipe or data) is recorded as failed with the
reason and the study goes on; Ctrl-C stops the study, the trial then running is marked failed
(interrupted) and does not count, and the command can be run again to continue.

Outputs: ``OUTPUT/trials.md`` / ``trials.json`` (every trial: state, value, parameters, reason),
``OUTPUT/best.yaml`` (the best trial's recipe, ready for ``mtlframe train``), written after every
trial.
"""
from __future__ import annotations

import copy
import json
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlframe.compare import GridAxis, _finite, _fmt, _override, value_label
from mtlframe.errors import MTLFrameError, RecipeError, read_text_file
from mtlframe.recipe import (Recipe, TuneConfig, TuneParam, apply_overrides, default_task_metrics, key_path_problem,
                             load_recipe, override_lines, parse_yaml, recipe_from_dict)

__all__ = ["PruningCallback", "TuneResult", "TrialResult", "run_tune", "space_problems", "tune_config"]

#: Optuna's study name inside the SQLite file
STUDY_NAME = "mtlframe-tune"

#: ``(recipe, run_dir, callbacks) -> {"val": {task: {metric: v}}, "monitor": {"name", "best"}, ...}``
TrainFn = Callable[[Recipe, Path, list], dict[str, Any]]


# ------------------------------------------------------------------------------------------------
# The search space
# ------------------------------------------------------------------------------------------------


def _candidates(param: TuneParam) -> list[Any]:
    """The values validated before the first trial: ``low`` and ``high`` (whole numbers for an
    ``int``), or every choice."""
    if param.type == "categorical":
        return list(param.choices or [])
    if param.type == "int":
        return sorted({int(param.low), int(param.high)})  # type: ignore[arg-type]
    return sorted({float(param.low), float(param.high)})  # type: ignore[arg-type]


def _without_tune(data: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(dict(data))
    out.pop("tune", None)
    return out


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def metric_problem(data: Mapping[str, Any], metric: str) -> str | None:
    """Why ``tune.metric`` is not a validation value the trials log, or ``None``."""
    if metric in ("auto", "val/score"):
        return None
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    ranking = data.get("ranking") if isinstance(data.get("ranking"), dict) else {}
    valid = ["auto", "val/score"]
    for tname, task in tasks.items():
        if not isinstance(task, dict):
            continue
        metrics = task.get("metrics") if isinstance(task.get("metrics"), list) else \
            default_task_metrics(str(task.get("type")), ranking.get("k")) if task.get("type") else []
        valid += [str(tname)] + [f"val/{tname}/{m}" for m in metrics]
    if metric in valid:
        return None
    from mtlframe.errors import closest, near_hint

    return (f"'{metric}' is not a validation value of this recipe" + near_hint(closest(metric, valid, n=1), ".")
            + f" Choose one of: {', '.join(valid)} (a task name is its primary validation metric; tune "
            "optimises validation values only, never test ones).")


def space_problems(data: Mapping[str, Any], lines: Mapping[str, int | str] | None = None) -> list[tuple[str, str]]:
    """Check a recipe's ``tune:`` section against the recipe, before any trial.

    For every ``tune.space`` key: the key is well formed, and the recipe (without ``tune:``) with
    the key set to each of its candidate values (``low`` and ``high``, or every choice) is a valid
    recipe. Problems the base recipe has anyway are reported once by the caller, not per value.
    ``tune.metric`` must be a validation value the recipe logs.

    Returns:
        ``(dotted path, message)`` pairs (``tune.space.<key>``), empty when all is well.
    """
    tune = data.get("tune")
    if not isinstance(tune, dict):
        return []
    problems: list[tuple[str, str]] = []
    metric = tune.get("metric", "auto")
    if isinstance(metric, str):
        bad = metric_problem(data, metric)
        if bad:
            problems.append(("tune.metric", bad))
    space = tune.get("space")
    if not isinstance(space, dict):
        return problems
    base = _without_tune(data)
    base_problems = set(_recipe_problems(base))
    for key, spec in space.items():
        where = f"tune.space.{key}"
        bad = key_path_problem(str(key))
        if bad:
            problems.append((where, bad))
            continue
        if str(key) == "tune" or str(key).startswith(("tune.", "tune[")):
            problems.append((where, "the tune section itself cannot be searched"))
            continue
        try:
            param = TuneParam.model_validate(spec)
        except Exception:  # noqa: BLE001 - the section's own schema errors are reported by pydantic
            continue
        if param.type == "categorical":
            labels = [c if _primitive(c) else value_label(c) for c in param.choices or []]
            if len(set(map(str, labels))) != len(labels):
                problems.append((where, f"choices repeat: {labels}; give each value once"))
                continue
        found: dict[tuple[str, str], list[str]] = {}
        for value in _candidates(param):
            ov = _override(str(key), value)
            try:
                trial = apply_overrides(base, [ov], via="tune.space")
            except RecipeError as exc:
                for p in exc.problems:
                    found.setdefault(p, []).append(_flow_value(value))
                continue
            for p in _recipe_problems(trial):
                if p not in base_problems:
                    found.setdefault(p, []).append(_flow_value(value))
        for (path, msg), values in found.items():
            at = "value" if len(values) == 1 else "values"
            problems.append((where, f"with {key}={' / '.join(values)} ({at} of the search space): "
                                    f"{path + ': ' if path and path != key else ''}{msg}"))
    return problems


def _flow_value(v: Any) -> str:
    return _override("k", v).partition("=")[2]


def _recipe_problems(data: dict) -> list[tuple[str, str]]:
    from mtlframe.recipe import validate

    try:
        validate(data)
    except RecipeError as exc:
        return [(p, m) for p, m in exc.problems]
    return []


def tune_config(recipe: Recipe) -> TuneConfig:
    """The recipe's ``tune:`` section.

    Raises:
        RecipeError: the recipe has none (and no ``--space`` file was given).
    """
    if recipe.config.tune is None:
        raise RecipeError([("tune", "this recipe has no tune: section; add one (tune: {space: {optimizer.lr: "
                                    "{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}}) or pass --space FILE "
                                    "(see docs/tune.md)")], recipe.source, recipe.lines)
    return recipe.config.tune


def _load(recipe_path: str | Path, overrides: Sequence[str], space: str | Path | None) -> Recipe:
    """The base recipe, with the ``--space`` file (the ``tune:`` mapping, or a file with a top-level
    ``tune:``) in place of its own ``tune:`` section; validated, space included."""
    if space is None:
        return load_recipe(recipe_path, list(overrides), checks=(space_problems,))
    sp = Path(space)
    text, problem = read_text_file(sp)
    if problem:
        raise RecipeError([("", f"--space {problem}; pass a YAML file with the tune mapping "
                                "(metric, direction, space)")], str(sp))
    side, side_lines = parse_yaml(text, str(sp))
    prefix = ""
    if set(side) == {"tune"} and isinstance(side["tune"], dict):
        side, prefix = side["tune"], "tune."
    # the recipe alone first (its own problems, its lines), without the tune: section the file replaces
    base = load_recipe(recipe_path, [*overrides, "tune=null"])
    data = {**base.data, "tune": side}
    lines = {k: v for k, v in base.lines.items() if not (k == "tune" or k.startswith("tune."))}
    for k, line in side_lines.items():
        key = k[len(prefix):] if prefix and k.startswith(prefix) else k
        lines[f"tune.{key}"] = f"{sp}:{line}"
    lines["tune"] = f"--space {sp}"
    return recipe_from_dict(data, str(recipe_path), lines, checks=(space_problems,))


# ------------------------------------------------------------------------------------------------
# Objective and pruning
# ------------------------------------------------------------------------------------------------


def resolve_metric(recipe: Recipe, tune: TuneConfig) -> tuple[str, str]:
    """``(logged key, "minimize" | "maximize")`` of ``tune.metric`` (``auto``: ``checkpoint.monitor``)."""
    from mtlframe.metrics.base import resolve_metric as metric_def

    metric = tune.metric if tune.metric != "auto" else recipe.config.checkpoint.monitor
    if metric == "auto":
        metric = "val/score"
    if metric in recipe.config.tasks:
        metric = f"val/{metric}/{recipe.task_metrics(metric)[0]}"
    monitor = recipe.config.checkpoint.monitor
    if metric == "val/score" and monitor not in ("auto", "val/score"):
        raise RecipeError([("tune.metric", f"val/score is known only where the checkpoint monitors it, and "
                                           f"checkpoint.monitor is '{monitor}'; write tune.metric: "
                                           "val/<task>/<metric>, or remove checkpoint.monitor")],
                          recipe.source, recipe.lines)
    if not metric.startswith("val/"):
        raise RecipeError([("tune.metric", f"tune.metric auto follows checkpoint.monitor, '{metric}', which is "
                                           "not a validation value; write tune.metric: val/<task>/<metric> "
                                           "(pruning reads it after each validation epoch)")],
                          recipe.source, recipe.lines)
    if tune.direction != "auto":
        return metric, tune.direction
    if metric == "val/score":
        return metric, "maximize"
    _, tname, mname = metric.split("/", 2)
    if recipe.config.tasks[tname].type == "retrieval":
        from mtlframe.ranking import higher_is_better

        return metric, "maximize" if higher_is_better(mname) else "minimize"
    return metric, "maximize" if metric_def(mname)[1].higher_is_better else "minimize"


def objective_value(result: Mapping[str, Any], metric: str) -> float:
    """The value of ``metric`` at a trained trial's best checkpoint: the monitored value when
    ``metric`` is what the checkpoint monitored, else ``result["val"][task][metric]``.

    Raises:
        MTLFrameError: the value is missing or not finite.
    """
    mon = result.get("monitor") or {}
    value = mon.get("best") if mon.get("name") == metric else None
    if value is None and metric.count("/") == 2:
        _, tname, mname = metric.split("/", 2)
        value = (result.get("val") or {}).get(tname, {}).get(mname)
    if value is None or not math.isfinite(float(value)):
        raise MTLFrameError(f"the trial's best checkpoint has no finite {metric} ({value}); it is recorded as failed")
    return float(value)


class _PruningReporter:
    """Reports the monitored validation value to an Optuna trial after every validation epoch and
    stops the trial (``optuna.TrialPruned``) when the study's pruner says so.

    Args:
        trial: the ``optuna.Trial`` being trained.
        monitor: the logged key (``val/rating/rmse``, ``val/score``).

    A missing or NaN value is not reported (the pruner sees only real values). The step is the
    epoch number. Only validations during ``fit`` count (not ``train``'s final validation of the
    best checkpoint). Single-process training only (DDP trials are not pruned consistently).
    :data:`PruningCallback` is this class as a Lightning ``Callback`` (built on first use, so that
    importing this module, e.g. by ``recipe validate``, does not import Lightning).
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None

    def report(self, value: float | None, step: int) -> None:
        """Report ``value`` at ``step``; raise ``optuna.TrialPruned`` when the pruner prunes."""
        import optuna

        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            raise optuna.TrialPruned(f"pruned after epoch {step}: {self.monitor}={value:.6g} is worse than the "
                                     "median of earlier trials at that epoch")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if getattr(trainer, "sanity_checking", False):
            return
        fn = getattr(getattr(trainer, "state", None), "fn", "fit")
        if fn is not None and str(getattr(fn, "value", fn)) != "fit":  # train()'s final validate of the best checkpoint
            return
        value = trainer.callback_metrics.get(self.monitor)
        self.report(None if value is None else float(value), int(trainer.current_epoch))


_CALLBACK: type | None = None


def _pruning_callback_class() -> type:
    global _CALLBACK
    if _CALLBACK is None:
        from pytorch_lightning import Callback

        _CALLBACK = type("PruningCallback", (_PruningReporter, Callback),
                         {"__doc__": _PruningReporter.__doc__, "__module__": __name__})
    return _CALLBACK


def __getattr__(name: str) -> Any:
    if name == "PruningCallback":
        return _pruning_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_train(recipe: Recipe, run_dir: Path, callbacks: list) -> dict[str, Any]:
    from mtlframe.run import train

    res = train(recipe, run_dir, progress=False, overwrite=True, callbacks=callbacks)
    payload = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {"val": res.metrics.get("val", {}), "test": res.metrics.get("test", {}),
            "monitor": payload.get("monitor"), "num_parameters": res.num_parameters,
            "train_seconds": res.train_seconds}


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    """One trial as the table shows it."""

    number: int
    state: str                      # complete | pruned | failed | running
    value: float | None
    params: dict[str, Any]          # dotted key -> value (choices as given in the space)
    reason: str | None = None
    run_dir: str | None = None
    seconds: float | None = None


@dataclass
class TuneResult:
    """What :func:`run_tune` returns (``trials.json`` holds the same)."""

    recipe: str
    command: str
    metric: str
    direction: str
    space: dict[str, dict[str, Any]]
    trials: list[TrialResult]
    best: TrialResult | None
    best_recipe: dict | None
    output: Path
    study: str
    keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return _finite({"recipe": self.recipe, "command": self.command, "metric": self.metric,
                        "direction": self.direction, "space": self.space, "study": self.study,
                        "best": None if self.best is None else self.best.__dict__,
                        "trials": [t.__dict__ for t in self.trials]})


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError as exc:
        raise MTLFrameError("mtlframe tune needs Optuna: pip install 'mtlframe[tune]'") from exc
    return optuna


def _suggest(trial: Any, key: str, param: TuneParam) -> Any:
    if param.type == "float":
        return trial.suggest_float(key, float(param.low), float(param.high), log=param.log,  # type: ignore[arg-type]
                                   step=param.step)
    if param.type == "int":
        return trial.suggest_int(key, int(param.low), int(param.high), log=param.log,  # type: ignore[arg-type]
                                 step=int(param.step or 1))
    choices = list(param.choices or [])
    labels = [c if _primitive(c) else value_label(c) for c in choices]
    picked = trial.suggest_categorical(key, labels)
    return choices[labels.index(picked)]


def _params(trial: Any, space: Mapping[str, TuneParam]) -> dict[str, Any]:
    """A finished trial's values (categorical labels mapped back to the space's values)."""
    out = {}
    for key, param in space.items():
        if key not in trial.params:
            continue
        v = trial.params[key]
        if param.type == "categorical":
            labels = [c if _primitive(c) else value_label(c) for c in param.choices or []]
            v = param.choices[labels.index(v)] if v in labels else v  # type: ignore[index]
        out[key] = v
    return out


def _state(trial: Any) -> str:
    name = trial.state.name.lower()
    if name == "fail" and trial.user_attrs.get("interrupted"):
        return "interrupted"
    return {"fail": "failed"}.get(name, name)


def _counts(trial: Any) -> bool:
    """Whether a trial counts toward ``--trials``: complete, pruned, or failed in training."""
    return _state(trial) in ("complete", "pruned", "failed")


def run_tune(recipe_path: str | Path, trials: int, *, overrides: Sequence[str] = (),
             space: str | Path | None = None, study: str | Path | None = None, timeout: float | None = None,
             output: str | Path | None = None, command: str = "", train_fn: TrainFn | None = None,
             progress: Callable[[str], None] | None = print) -> TuneResult:
    """Search the recipe's ``tune:`` space (or ``space``'s) with Optuna. See the module docstring.

    Args:
        recipe_path: the base recipe.
        trials: the number of finished trials wanted in the study (those already in a resumed
            study count).
        overrides: dotted overrides applied to the recipe (and so to every trial).
        space: a YAML file with the ``tune:`` mapping, replacing the recipe's own.
        study: the SQLite file of the study (default ``OUTPUT/study.db``).
        timeout: stop starting trials after this many seconds (the running one finishes).
        output: folder for ``trials/``, ``trials.json``, ``trials.md``, ``best.yaml`` (default
            ``runs/tune-<time>``).
        train_fn: ``(recipe, run_dir, callbacks) -> {"val", "monitor", ...}`` (tests inject a fake
            one; it may call ``callbacks[0].report(value, epoch)``); default :func:`mtlframe.run.train`.
        progress: called with one line per finished trial.

    Raises:
        RecipeError: the recipe, the space or a value of the space is invalid (all listed,
            nothing trained); the study file holds a study of another space or metric.
        MTLFrameError: Optuna is not installed; ``trials`` < 1.
        KeyboardInterrupt: Ctrl-C (the study stays resumable).
    """
    if trials < 1:
        raise MTLFrameError(f"--trials must be >= 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise MTLFrameError(f"--timeout must be > 0 seconds, got {timeout}")
    base = _load(recipe_path, overrides, space)
    tune = tune_config(base)
    metric, direction = resolve_metric(base, tune)
    optuna = _optuna()
    out = Path(output) if output else Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    study_path = Path(study) if study else out / "study.db"
    study_path.parent.mkdir(parents=True, exist_ok=True)
    train_fn = train_fn or _default_train
    say = progress or (lambda s: None)
    base_data = _without_tune(base.data)
    base_lines = {k: v for k, v in base.lines.items() if not k.startswith("tune")}
    space_json = {k: p.model_dump(exclude_defaults=True) for k, p in tune.space.items()}

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{study_path.resolve()}"
    try:
        existing = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        saved = existing.user_attrs
        if saved.get("space") != space_json or saved.get("metric") != metric:
            raise RecipeError([("tune", f"the study in {study_path} searched another space or metric "
                                        f"(metric {saved.get('metric')}, space {json.dumps(saved.get('space'))}); "
                                        "give a new --study or --output, or restore that search space")],
                              base.source, base.lines)
    n_before = 0 if existing is None else len(existing.trials)
    sampler = optuna.samplers.TPESampler(seed=base.config.seed + n_before, n_startup_trials=tune.startup_trials)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)
              if tune.pruner == "median" else optuna.pruners.NopPruner())
    st = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction=direction,
                             sampler=sampler, pruner=pruner)
    if existing is None:
        st.set_user_attr("space", space_json)
        st.set_user_attr("metric", metric)
        st.set_user_attr("recipe", str(recipe_path))
    keys = list(tune.space)

    def objective(trial: Any) -> float:
        params = {k: _suggest(trial, k, p) for k, p in tune.space.items()}
        ov = [_override(k, v) for k, v in params.items()]
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", ov)
        start = time.perf_counter()
        cb = _pruning_callback_class()(trial, metric)
        try:
            r = recipe_from_dict(apply_overrides(base_data, ov, via="tune.space"), str(recipe_path),
                                 override_lines(base_lines, ov, via="tune.space"))
            result = train_fn(r, run_dir, [cb])
            value = objective_value(result, metric)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc) or "pruned")
            trial.set_user_attr("seconds", time.perf_counter() - start)
            _mark_run(run_dir, "pruned", str(exc))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("reason", "interrupted (Ctrl-C); does not count toward --trials")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded, the study goes on
            reason = f"{type(exc).__name__}: {exc}".strip()
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            trial.set_user_attr("reason", reason[:2000])
            trial.set_user_attr("seconds", time.perf_counter() - start)
            raise _TrialFailed(reason) from None
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return value

    result = _result(st, base_data, tune, recipe_path, command, metric, direction, space_json, out, study_path, keys)

    def after(study_: Any, frozen: Any) -> None:
        res = _result(study_, base_data, tune, recipe_path, command, metric, direction, space_json, out,
                      study_path, keys)
        result.__dict__.update(res.__dict__)
        write_outputs(result)
        t = next(t for t in res.trials if t.number == frozen.number)
        done = sum(_counts(x) for x in study_.trials)
        say(_progress_line(t, done, trials, metric, res.best))

    remaining = trials - sum(_counts(t) for t in st.trials)
    if remaining > 0:
        if n_before:
            say(f"resuming the study in {study_path}: {trials - remaining} trial(s) finished, {remaining} to go")
        try:
            st.optimize(objective, n_trials=remaining, timeout=timeout, catch=(_TrialFailed,), callbacks=[after],
                        gc_after_trial=train_fn is _default_train)  # frees a trained model (~1 s: torch's objects)
        except KeyboardInterrupt:
            write_outputs(result)
            kept = sum(_counts(t) for t in st.trials)
            raise KeyboardInterrupt(f"mtlframe tune interrupted (Ctrl-C): the study in {study_path} keeps its {kept} "
                                    "finished trial(s); run the same command to continue it") from None
    elif n_before:
        say(f"the study in {study_path} already has {trials - remaining} finished trial(s) (--trials {trials})")
    result.__dict__.update(_result(st, base_data, tune, recipe_path, command, metric, direction, space_json, out,
                                   study_path, keys).__dict__)
    write_outputs(result)
    return result


class _TrialFailed(Exception):
    """A trial's training failed; Optuna records it as failed and the study continues."""


def _mark_run(run_dir: Path, status: str, reason: str) -> None:
    if run_dir.is_dir():
        from mtlframe.run import _write_status

        _write_status(run_dir, {"status": status, "reason": reason})


def _result(st: Any, base_data: dict, tune: TuneConfig, recipe_path: str | Path, command: str, metric: str,
            direction: str, space_json: dict, out: Path, study_path: Path, keys: list[str]) -> TuneResult:
    trials = [TrialResult(t.number, _state(t), t.value if t.state.name == "COMPLETE" else None,
                          _params(t, tune.space), t.user_attrs.get("reason"), t.user_attrs.get("run_dir"),
                          t.user_attrs.get("seconds")) for t in st.trials]
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    best = None
    if done:
        best = (min if direction == "minimize" else max)(done, key=lambda t: t.value)  # type: ignore[arg-type]
    best_recipe = None
    if best is not None:
        best_recipe = apply_overrides(base_data, [_override(k, v) for k, v in best.params.items()], via="tune.space")
    return TuneResult(str(recipe_path), command, metric, direction, space_json, trials, best, best_recipe, out,
                      str(study_path), keys)


def _progress_line(t: TrialResult, done: int, total: int, metric: str, best: TrialResult | None) -> str:
    params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    head = f"[{done}/{total}] trial {t.number} {params}"
    if t.state == "complete":
        tail = f"{metric}={_fmt(t.value, 5)} (best {_fmt(best.value, 5) if best else '-'}, trial "\
               f"{best.number if best else '-'})"
    else:
        tail = f"{t.state.upper()}: {t.reason or ''}".splitlines()[0][:300]
    secs = f" ({t.seconds:.1f} s)" if t.seconds else ""
    return f"{head}: {tail}{secs}"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return value_label(v) if not isinstance(v, str) else v


def best_yaml(result: TuneResult) -> str | None:
    """The best trial's recipe as YAML with a header comment (what ``best.yaml`` holds)."""
    if result.best is None or result.best_recipe is None:
        return None
    head = [f"# Best of {sum(t.state == 'complete' for t in result.trials)} complete trial(s) of mtlframe tune "
            f"({len(result.trials)} in the study {result.study}):",
            f"# trial {result.best.number}, {result.metric} = {result.best.value:.6g} ({result.direction}; "
            "validation split of the trial's best checkpoint)"]
    if result.command:
        head.append(f"#   {result.command}")
    head.append(f"# Train it: mtlframe train {result.output}/best.yaml")
    return "\n".join(head) + "\n" + yaml.safe_dump(result.best_recipe, sort_keys=False)


def _cells(result: TuneResult) -> tuple[list[str], list[list[str]]]:
    header = ["trial", "state", result.metric, *[GridAxis(k, ()).header for k in result.keys], "s", "note"]
    rows = []
    order = sorted(result.trials, key=lambda t: (t.state != "complete", (t.value if t.value is not None else 0)
                                                 * (1 if result.direction == "minimize" else -1), t.number))
    for t in order:
        star = " *" if result.best is not None and t.number == result.best.number else ""
        rows.append([f"{t.number}{star}", t.state, _fmt(t.value, 5),
                     *[_short(t.params[k]) if k in t.params else "-" for k in result.keys],
                     f"{t.seconds:.1f}" if t.seconds else "-",
                     (t.reason or "").splitlines()[0][:120] if t.state != "complete" else ""])
    return header, rows


def rich_table(result: TuneResult):
    """The trials as a :class:`rich.table.Table`, best first (``*`` marks the best)."""
    from rich.table import Table

    header, rows = _cells(result)
    table = Table(title=f"{result.recipe}: {len(result.trials)} trial(s), {result.metric} ({result.direction}, "
                        "validation split)")
    for i, h in enumerate(header):
        table.add_column(h, justify="right" if i in (0, 2) or h == "s" else "left")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(result: TuneResult) -> str:
    """The trials as a GitHub Markdown table (what ``trials.md`` holds)."""
    header, rows = _cells(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("--:" if i in (0, 2) else ":--"
                                                             for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(result: TuneResult) -> None:
    """Write ``trials.json``, ``trials.md`` and (once a trial completed) ``best.yaml``."""
    out = result.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.json").write_text(json.dumps(result.to_json(), indent=2, default=str), encoding="utf-8")
    md = [f"```\n{result.command}\n```" if result.command else "", "", markdown_table(result), "",
          f"`{result.metric}` on the validation split at each trial's best checkpoint ({result.direction}); "
          "`*`: the best trial; `s`: wall time of the trial.", ""]
    (out / "trials.md").write_text("\n".join(md).lstrip("\n"), encoding="utf-8")
    text = best_yaml(result)
    if text is not None:
        (out / "best.yaml").write_text(text, encoding="utf-8")

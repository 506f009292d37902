"""``mtlframe compare``: train a grid of recipe variants over several seeds and tabulate them.

One command answers "which architecture / balancing method wins on my data, and by how much":

    mtlframe compare recipes/adult_mmoe.yaml --seeds 3 \\
        --grid 'model.backbone={name: single-task}|{name: shared-bottom}|{name: mmoe}|{name: ple}' \\
        --grid combiner.name=static,uncertainty --output runs/compare-adult

Every grid point (the cartesian product of the ``--grid`` axes) is trained once per seed (the
override ``seed=<s>``, which also reseeds the data split). The table shows, per configuration,
each task's test metrics as mean ± std over seeds (sample standard deviation, ``ddof=1``; with
one seed, or one successful seed, the value alone: the spread of one value is undefined), the
trainable parameters, the mean training time, and the gain of multi-task learning over a
baseline (by default the ``single-task`` backbone with every other setting equal):

* per task, the relative gain of its primary metric (the first one the task lists), sign-aware::

      gain_t = (M_t - B_t) / B_t   if higher is better (AUC, accuracy)
      gain_t = (B_t - M_t) / B_t   if lower is better (RMSE, logloss)

* ``Δm = (1/T) Σ_t (-1)^{l_t} (M_t - B_t) / B_t`` with ``l_t = 1`` when lower is better: the
  mean of the per-task gains (Maninis et al., CVPR 2019; Tang et al., RecSys 2020; LibMTL).
  ``M_t`` and ``B_t`` are means over seeds.

A baseline configuration that is not itself in the grid is trained as an extra row (marked
``baseline``). Each run has its own directory ``OUTPUT/runs/<config>-<hash>/seed-<s>`` (``--runs-dir`` to share
one between comparisons); a run whose
``metrics.json`` exists (with the same resolved recipe) is not trained again, so an interrupted
comparison resumes. A run that raises is recorded (``error.txt`` with the traceback) and shown in
the table; it does not stop the others. ``OUTPUT/results.json`` and ``OUTPUT/results.md`` (the
command line and the table as Markdown) are written after every finished run.

Grid values are YAML. ``KEY=v1,v2`` splits on top-level commas (commas inside ``[...]`` or
``{...}`` do not split); ``KEY=v1|v2`` splits on ``|`` instead, for whole component mappings
whose arguments differ: ``model.backbone={name: mmoe, num_experts: 4}|{name: ple, num_levels: 2}``.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlframe.errors import MTLFrameError, RecipeError, folder_problem
from mtlframe.recipe import (Recipe, _split_path, apply_overrides, key_path_problem, load_recipe, override_lines,
                             parse_yaml, recipe_from_dict)

__all__ = ["CompareResult", "GridAxis", "Repeat", "aggregate", "delta_m", "markdown_table", "mean_std", "parse_grid",
           "parse_seeds", "relative_gain", "rich_table", "run_compare"]

BACKBONE_KEYS = ("model.backbone", "model.backbone.name")


# ------------------------------------------------------------------------------------------------
# Grid specification
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=...`` axis: a dotted recipe key and the values it takes."""

    key: str
    values: tuple[Any, ...]

    @property
    def header(self) -> str:
        """Short column header: ``model.backbone.name`` -> ``backbone``, ``combiner.name`` -> ``combiner``."""
        parts = self.key.split(".")
        if parts[-1] == "name" and len(parts) > 1:
            parts = parts[:-1]
        return parts[-1]


def _split_top_level(text: str, sep: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_grid(spec: str) -> GridAxis:
    """Parse ``KEY=v1,v2,...`` or ``KEY=v1|v2|...`` (values as YAML).

    Raises:
        RecipeError: no ``=``, an empty key, or a value that is not YAML.
    """
    key, sep, raw = spec.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise RecipeError([(key or spec, (f"--grid '{spec}' must look like KEY=v1,v2 or KEY=v1|v2 "
                                         "(e.g. model.backbone.name=shared-bottom,mmoe)"))], "--grid")
    bad = key_path_problem(key)
    if bad:
        raise RecipeError([(key, f"--grid '{spec}': {bad}.")], "--grid")
    pieces = raw.split("|") if "|" in raw else _split_top_level(raw, ",")
    values = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            raise RecipeError([(key, f"--grid '{spec}' has an empty value")], "--grid")
        try:
            values.append(yaml.safe_load(piece))
        except yaml.YAMLError as exc:
            raise RecipeError([(key, f"--grid value '{piece}' is not valid YAML: {exc}")], "--grid") from None
    return GridAxis(key, tuple(values))


def parse_seeds(spec: str | int, base: int) -> list[int]:
    """``3`` -> ``[base, base+1, base+2]``; ``"1,7,42"`` -> ``[1, 7, 42]``."""
    text = str(spec).strip()
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise MTLFrameError(f"--seeds '{spec}' must be a count (3) or a comma-separated list (1,2,3)") from None
    if n < 1:
        raise MTLFrameError(f"--seeds must be >= 1, got {n}")
    return [base + i for i in range(n)]


def value_label(value: Any) -> str:
    """Compact text for a grid value: ``{name: mmoe, num_experts: 8}`` -> ``mmoe(num_experts=8)``."""
    if isinstance(value, dict) and "name" in value:
        args = ", ".join(f"{k}={_flow(v)}" for k, v in value.items() if k != "name")
        return f"{value['name']}({args})" if args else str(value["name"])
    return _flow(value)


def _flow(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    if value is None:
        return "null"
    return str(value)


def _override(key: str, value: Any) -> str:
    return f"{key}={_flow(value) if not isinstance(value, str) else json.dumps(value)}"


# ------------------------------------------------------------------------------------------------
# Aggregation (pure functions, unit-tested on hand-made numbers)
# ------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``). NaNs are dropped; one finite value gives
    ``(value, nan)`` (the spread of one value is undefined, not 0: tables show the value alone and
    ``results.json`` a null ``std``); no finite value gives ``(nan, nan)``."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def relative_gain(value: float, baseline: float, higher_is_better: bool) -> float:
    """Sign-aware relative gain: positive when ``value`` is better than ``baseline``.

    ``(value - baseline) / |baseline|`` if higher is better, ``(baseline - value) / |baseline|``
    if lower is better; ``nan`` if either is missing or the baseline is 0.
    """
    if value is None or baseline is None or not (math.isfinite(value) and math.isfinite(baseline)) \
            or baseline == 0:
        return float("nan")
    diff = value - baseline if higher_is_better else baseline - value
    return diff / abs(baseline)


def delta_m(gains: Sequence[float]) -> float:
    """``Δm``: the mean of per-task relative gains (already sign-aware), ``nan`` if any is missing."""
    gains = list(gains)
    if not gains or any(g is None or not math.isfinite(g) for g in gains):
        return float("nan")
    return sum(gains) / len(gains)


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate the finished runs of one configuration.

    Args:
        runs: ``{"metrics": {task: {metric: value}}, "num_parameters": int, "train_seconds": float}``
            per successful seed.

    Returns:
        ``{"metrics": {task: {metric: {"mean", "std", "n"}}}, "num_parameters", "train_seconds"}``
        (``train_seconds`` is the mean).
    """
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for task, per in run["metrics"].items():
            for name in per:
                metrics.setdefault(task, {}).setdefault(name, {})
    for task, per in metrics.items():
        for name in per:
            vals = [r["metrics"].get(task, {}).get(name) for r in runs]
            m, s = mean_std([v for v in vals if v is not None])
            per[name] = {"mean": m, "std": s, "n": sum(v is not None for v in vals)}
    params = [r["num_parameters"] for r in runs if r.get("num_parameters") is not None]
    secs = [r["train_seconds"] for r in runs if r.get("train_seconds") is not None]
    return {"metrics": metrics, "num_parameters": round(sum(params) / len(params)) if params else None,
            "train_seconds": (sum(secs) / len(secs)) if secs else None}


def gains_over(config: dict[str, Any], baseline: dict[str, Any], primary: dict[str, tuple[str, bool]]
               ) -> tuple[dict[str, float], float]:
    """Per-task relative gains of ``config`` over ``baseline`` (both :func:`aggregate` outputs) on
    each task's primary metric, and their mean ``Δm``.

    Args:
        primary: ``{task: (metric name, higher_is_better)}``.
    """
    gains = {}
    for task, (name, hib) in primary.items():
        m = config["metrics"].get(task, {}).get(name, {}).get("mean", float("nan"))
        b = baseline["metrics"].get(task, {}).get(name, {}).get("mean", float("nan"))
        gains[task] = relative_gain(m, b, hib)
    return gains, delta_m(list(gains.values()))


# ------------------------------------------------------------------------------------------------
# Running the grid
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    """One repetition of every configuration: a seed (``compare``), or a seed and a fold (``cv``).

    The run of a configuration for this repeat is its recipe with ``seed`` (and, with a ``fold``,
    ``data.split.fold``) replaced, in the run folder ``<config slug>/<tag>``.
    """

    tag: str
    seed: int
    fold: int | None = None

    def apply(self, data: dict) -> dict:
        """The recipe mapping ``data`` (not changed) with this repeat's seed and fold."""
        out = {**data, "seed": self.seed}
        if self.fold is not None:
            out["data"] = {**out["data"], "split": {**out["data"].get("split", {}), "fold": self.fold}}
        return out


def seed_repeats(seeds: Sequence[int]) -> list[Repeat]:
    """``compare``'s repeats: one per seed, run folders ``seed-<s>``."""
    return [Repeat(f"seed-{s}", s) for s in seeds]


@dataclass
class ConfigResult:
    """One configuration (a grid point or an added baseline) and its runs."""

    label: dict[str, str]                 # axis header -> value label
    overrides: list[str]                  # dotted overrides applied to the recipe (seed excluded)
    slug: str
    is_baseline: bool = False
    in_grid: bool = True
    runs: list[dict[str, Any]] = field(default_factory=list)   # per repeat: {seed, [fold], status, ...}
    summary: dict[str, Any] | None = None
    baseline_slug: str | None = None
    gains: dict[str, float] = field(default_factory=dict)
    delta_m: float = float("nan")


@dataclass
class CompareResult:
    """What :func:`run_compare` returns (and writes as ``results.json``)."""

    recipe: str
    command: str
    axes: list[GridAxis]
    seeds: list[int]
    tasks: dict[str, list[str]]                 # task -> metric names (primary first)
    primary: dict[str, tuple[str, bool]]        # task -> (primary metric, higher_is_better)
    configs: list[ConfigResult]
    baseline: list[str]
    output: Path | None
    display_metrics: list[str] | None = None   # metric names shown in tables (None: all)
    label_headers: list[str] = field(default_factory=list)  # label columns: grid axes, then baseline keys

    def to_json(self) -> dict[str, Any]:
        return _finite({
            "recipe": self.recipe, "command": self.command, "seeds": self.seeds,
            "grid": [{"key": a.key, "values": list(a.values)} for a in self.axes],
            "baseline": self.baseline,
            "tasks": {t: {"metrics": ms, "primary": self.primary[t][0],
                          "higher_is_better": self.primary[t][1]} for t, ms in self.tasks.items()},
            "configs": [{"label": c.label, "overrides": c.overrides, "slug": c.slug,
                         "in_grid": c.in_grid, "is_baseline": c.is_baseline,
                         "baseline": c.baseline_slug, "summary": c.summary, "gains": c.gains,
                         "delta_m": c.delta_m, "runs": c.runs} for c in self.configs],
        })


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _slug(label: dict[str, str], data: dict) -> str:
    text = "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", f"{k}={v}").strip("-") for k, v in label.items()) or "recipe"
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{text[:80]}-{digest}"


def _baseline_overrides(baseline: Sequence[str], axes: Sequence[GridAxis]) -> list[str]:
    """``--baseline`` items as overrides: a bare name is a backbone (``single-task``); ``K=V`` as is.

    A bare name reuses the grid's backbone value of that name when there is one (so its arguments
    match a grid row), else it becomes ``model.backbone={name: <name>}`` with default arguments.
    """
    out = []
    for item in baseline:
        if "=" in item:
            out.append(item)
            continue
        for axis in axes:
            if axis.key in BACKBONE_KEYS:
                for v in axis.values:
                    vname = v.get("name") if isinstance(v, dict) else v
                    if vname == item:
                        out.append(_override(axis.key, v))
                        break
                else:
                    continue
                break
        else:
            out.append(_override("model.backbone", {"name": item}))
    return out


def _primary(recipe: Recipe) -> tuple[dict[str, list[str]], dict[str, tuple[str, bool]]]:
    from mtlframe.metrics.base import resolve_metric

    tasks, primary = {}, {}
    for t in recipe.config.tasks:
        names = recipe.task_metrics(t)
        tasks[t] = names
        if recipe.config.tasks[t].type == "retrieval":  # full-ranking metrics (popularity@K: lower is better)
            from mtlframe.ranking import higher_is_better

            primary[t] = (names[0], higher_is_better(names[0]))
            continue
        mdef = resolve_metric(names[0])[1]
        primary[t] = (names[0], bool(mdef.higher_is_better))
    return tasks, primary


def _lookup(data: Any, dotted: str) -> Any:
    for part in _split_path(dotted):
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _strip_seed(data: dict) -> dict:
    d = copy.deepcopy(data)
    d.pop("seed", None)
    return d


TrainFn = Callable[[Recipe, Path], dict[str, Any]]


def _default_train(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    from mtlframe.run import train

    # called only when run_dir holds no finished run of this recipe (or --no-resume): replace it
    res = train(recipe, run_dir, progress=False, overwrite=True)
    return {"metrics": res.metrics.get("test", {}), "num_parameters": res.num_parameters,
            "train_seconds": res.train_seconds}


def _load_done(run_dir: Path, recipe: Recipe) -> dict[str, Any] | None:
    mfile, rfile = run_dir / "metrics.json", run_dir / "recipe.yaml"
    if not (mfile.is_file() and rfile.is_file()):
        return None
    try:
        saved, _ = parse_yaml(rfile.read_text(encoding="utf-8"), str(rfile))
        payload = json.loads(mfile.read_text(encoding="utf-8"))
    except (OSError, ValueError, MTLFrameError):
        return None
    resolved = getattr(recipe, "resolved", None)  # train() saves the resolved recipe (defaults filled in)
    if saved != recipe.data and (resolved is None or saved != resolved()):
        return None
    return {"metrics": payload.get("test", {}), "num_parameters": payload.get("num_parameters"),
            "train_seconds": payload.get("train_seconds")}


def run_compare(recipe_path: str | Path, grid: Sequence[str | GridAxis], seeds: str | int = 3, *,
                overrides: Sequence[str] = (), baseline: Sequence[str] | None = ("single-task",),
                output: str | Path | None = None, command: str = "", resume: bool = True,
                runs_dir: str | Path | None = None, train_fn: TrainFn | None = None,
                metrics: Sequence[str] | None = None,
                progress: Callable[[str], None] | None = print, repeats: Sequence[Repeat] | None = None,
                write: Callable[[CompareResult], None] | None = None) -> CompareResult:
    """Train every grid point × seed and aggregate. See the module docstring.

    Args:
        recipe_path: the base recipe.
        grid: ``--grid`` specs (``"KEY=v1,v2"``) or :class:`GridAxis` objects.
        seeds: a count or a comma-separated list (see :func:`parse_seeds`).
        overrides: dotted overrides applied to every run before the grid values.
        baseline: items defining the baseline (bare backbone name and/or ``KEY=VALUE``); empty or
            ``None`` for no gains.
        output: directory for ``runs/``, ``results.json`` and ``results.md`` (none: a temporary
            layout under ``runs/compare-<time>``).
        resume: reuse runs whose ``metrics.json`` exists with the same recipe.
        runs_dir: where run directories go (default ``OUTPUT/runs``). Run directories are named by
            a hash of the resolved recipe, so comparisons can share one and reuse each other's runs.
        train_fn: ``(recipe, run_dir) -> {"metrics", "num_parameters", "train_seconds"}``
            (tests inject a fake one); the default trains with :func:`mtlframe.run.train`.
        metrics: metric names to show in the tables (all by default; ``results.json`` keeps all).
        progress: called with one line per finished run.
        repeats: the repetitions of every configuration (default one per seed,
            :func:`seed_repeats`); ``mtlframe cv`` gives one per seed and fold.
        write: called with the result after every finished run (default :func:`write_outputs`).

    Raises:
        MTLFrameError: an invalid grid value, override or grid configuration; every configuration
            (and its baseline) is validated before any training starts, and all problems are listed.
    """
    axes = [a if isinstance(a, GridAxis) else parse_grid(a) for a in grid]
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise MTLFrameError(f"--grid keys repeat: {', '.join(keys)}; give each key once with all its values.")
    base = load_recipe(recipe_path, list(overrides))
    seed_list = parse_seeds(seeds, base.config.seed)
    repeats = list(repeats) if repeats is not None else seed_repeats(seed_list)
    write = write or write_outputs
    out = Path(output) if output else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    train_fn = train_fn or _default_train
    say = progress or (lambda s: None)

    # every configuration is built and validated before anything trains
    configs: list[ConfigResult] = []
    recipes: dict[str, Recipe] = {}
    problems: list[str] = []
    combos = list(itertools.product(*[a.values for a in axes])) if axes else [()]
    for combo in combos:
        ov = [_override(a.key, v) for a, v in zip(axes, combo)]
        label = {a.header: value_label(v) for a, v in zip(axes, combo)}
        try:
            r = recipe_from_dict(apply_overrides(base.data, ov, via="--grid"), str(recipe_path),
                                 override_lines(base.lines, ov, via="--grid"))
        except RecipeError as exc:
            problems.append(f"{' '.join(ov)}:\n{exc}")
            continue
        slug = _slug(label, _strip_seed(r.data))
        configs.append(ConfigResult(label, ov, slug))
        recipes[slug] = r
    base_ov = _baseline_overrides(list(baseline or []), axes)
    if base_ov:
        by_data = {json.dumps(_strip_seed(recipes[c.slug].data), sort_keys=True, default=str): c
                   for c in configs}
        for c in list(configs):
            ov = c.overrides + base_ov
            try:
                r = recipe_from_dict(
                    apply_overrides(apply_overrides(base.data, c.overrides, via="--grid"), base_ov, via="--baseline"),
                    str(recipe_path),
                    override_lines(override_lines(base.lines, c.overrides, via="--grid"), base_ov, via="--baseline"))
            except RecipeError as exc:
                problems.append(f"baseline of {' '.join(c.overrides)} ({' '.join(base_ov)}):\n{exc}")
                continue
            key = json.dumps(_strip_seed(r.data), sort_keys=True, default=str)
            match = by_data.get(key)
            if match is None:  # train the baseline as an extra row
                label = dict(c.label)
                for o in base_ov:
                    k, _, v = o.partition("=")
                    header = GridAxis(k, ()).header
                    label[header] = value_label(yaml.safe_load(v))
                match = ConfigResult(label, ov, _slug(label, _strip_seed(r.data)), in_grid=False)
                match.baseline_slug = match.slug  # its own baseline: gains 0, like a grid baseline row
                configs.append(match)
                recipes[match.slug] = r
                by_data[key] = match
            match.is_baseline = True
            c.baseline_slug = match.slug
    # a key the baseline sets but no grid axis varies gets its own column, filled in for every row
    headers = [a.header for a in axes]
    for o in base_ov:
        k = o.partition("=")[0]
        h = GridAxis(k, ()).header
        if h in headers:
            continue
        headers.append(h)
        for c in configs:
            if h not in c.label:
                c.label[h] = value_label(_lookup(recipes[c.slug].data, k))
    if problems:
        hint = ""
        if any(a.key.endswith(".name") for a in axes):
            hint = ("\n\nWhen components need different arguments, give whole mappings separated by '|': "
                    "--grid 'model.backbone={name: single-task, hidden: [64]}|{name: mmoe, num_experts: 4}'")
        raise MTLFrameError("compare: some grid configurations are not valid recipes (nothing was trained):\n\n"
                            + "\n\n".join(problems) + hint)

    for flag, folder in (("--output", out), ("--runs-dir", runs_dir)):
        if folder is not None and folder_problem(folder):
            raise MTLFrameError(f"{flag} {folder} {folder_problem(folder)}; pass a folder (it is created if missing).")
    tasks, primary = _primary(base)
    if metrics:
        metrics = [m.strip() for m in metrics]
        known = list(dict.fromkeys(m for ms in tasks.values() for m in ms))
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise MTLFrameError(f"--metrics: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} "
                                f"not a metric of any task of {recipe_path}; its metrics: {', '.join(known)} "
                                "(nothing was trained).")
    result = CompareResult(str(recipe_path), command, axes, seed_list, tasks, primary, configs,
                           base_ov, out, list(metrics) if metrics else None, headers)
    out.mkdir(parents=True, exist_ok=True)
    runs_root = Path(runs_dir) if runs_dir else out / "runs"
    # seed-major, baselines first: an interrupted comparison leaves whole seeds of every row,
    # and gains appear as early as possible in the partial results
    order = sorted(configs, key=lambda c: not c.is_baseline)
    total = len(order) * len(repeats)
    done = 0
    for rp in repeats:
        for c in order:
            r = recipe_from_dict(rp.apply(recipes[c.slug].data), str(recipe_path))
            run_dir = runs_root / c.slug / rp.tag
            entry: dict[str, Any] = {"seed": rp.seed, "run_dir": str(run_dir)}
            if rp.fold is not None:
                entry["fold"] = rp.fold
            cached = None
            if resume:  # this comparison's run, else the same recipe run by another (shared --runs-dir)
                digest = c.slug.rsplit("-", 1)[-1]
                for cand in [run_dir, *sorted(runs_root.glob(f"*-{digest}/{rp.tag}"))]:
                    cached = _load_done(cand, r)
                    if cached is not None:
                        entry["run_dir"] = str(cand)
                        break
            if cached is not None:
                entry.update(status="ok", resumed=True, **cached)
            else:
                try:
                    entry.update(status="ok", **train_fn(r, run_dir))
                except KeyboardInterrupt as exc:  # say how to go on: the same command, not train --resume
                    again = f"`{command}`" if command else "the same comparison (same output)"
                    raise KeyboardInterrupt((f"{exc}\n" if str(exc) else "") + f"{done} of {total} runs finished "
                                            f"and are kept; run {again} again to continue: finished runs are "
                                            "reused, the interrupted one trains again from the start.") from exc
                except Exception as exc:  # noqa: BLE001 - a failed run is reported, not fatal
                    tb = traceback.format_exc()
                    run_dir.mkdir(parents=True, exist_ok=True)
                    (run_dir / "error.txt").write_text(tb, encoding="utf-8")
                    entry.update(status="failed", error=_one_line(exc))
            c.runs.append(entry)
            done += 1
            say(_progress_line(done, total, c, entry, primary))
            _finish(result)
            write(result)
    return result


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (at most 300 characters); a message whose first line ends in ':'
    (``recipe X has 1 problem:``) keeps its next line, the problem itself."""
    lines = [ln.strip() for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return text[:300]


def _progress_line(done: int, total: int, c: ConfigResult, entry: dict, primary: dict) -> str:
    label = " ".join(f"{k}={v}" for k, v in c.label.items()) or "recipe"
    head = f"[{done}/{total}] {label} seed={entry['seed']}" + (f" fold={entry['fold']}" if "fold" in entry else "")
    if entry["status"] != "ok":
        return f"{head}: FAILED {entry['error']} (traceback: {entry['run_dir']}/error.txt)"
    vals = " ".join(f"{t}/{m}={_fmt(entry['metrics'].get(t, {}).get(m))}" for t, (m, _) in primary.items())
    how = "resumed" if entry.get("resumed") else f"{entry.get('train_seconds') or 0:.1f} s"
    return f"{head}: {vals} ({how})"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _finish(result: CompareResult) -> None:
    """(Re)compute summaries, gains and Δm from the runs so far."""
    by_slug = {c.slug: c for c in result.configs}
    for c in result.configs:
        ok = [r for r in c.runs if r["status"] == "ok"]
        c.summary = aggregate(ok) if ok else None
    for c in result.configs:
        b = by_slug.get(c.baseline_slug) if c.baseline_slug else None
        if c.summary and b is not None and b.summary:
            c.gains, c.delta_m = gains_over(c.summary, b.summary, result.primary)
        else:
            c.gains, c.delta_m = {}, float("nan")


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def _cells(result: CompareResult, metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    metrics = metrics or result.display_metrics
    axes_h = result.label_headers or [a.header for a in result.axes]
    cols = [(t, m) for t, ms in result.tasks.items() for m in ms if not metrics or m in metrics]
    header = [*axes_h, *[f"{t} {m}" for t, m in cols], "params", "train s"]
    show_gain = bool(result.baseline)
    if show_gain:
        header += [f"Δ{t} {result.primary[t][0]}" for t in result.tasks] + ["Δm"]
    rows = []
    n = len(result.seeds)
    for c in result.configs:
        label = [c.label.get(h, "") for h in axes_h]
        if c.is_baseline and label:
            label[-1] += " (baseline)"
        ok = [r for r in c.runs if r["status"] == "ok"]
        failed = [r for r in c.runs if r["status"] != "ok"]
        if not c.runs:
            rows.append([*label, *["pending"] + [""] * (len(header) - len(label) - 1)])
            continue
        if not ok:
            msg = f"FAILED ({len(failed)}/{len(c.runs)} seeds): {failed[0]['error']}"
            rows.append([*label, msg, *[""] * (len(header) - len(label) - 1)])
            continue
        s = c.summary or aggregate(ok)
        cells = []
        for t, m in cols:
            st = s["metrics"].get(t, {}).get(m)
            cells.append("-" if not st or not math.isfinite(st["mean"]) else _mean_pm_std(st["mean"], st["std"]))
        params = f"{s['num_parameters']:,}" if s["num_parameters"] is not None else "-"
        secs = f"{s['train_seconds']:.1f}" if s["train_seconds"] is not None else "-"
        if failed or len(ok) < n:
            secs += f" ({len(ok)}/{n} seeds ok)"
        row = [*label, *cells, params, secs]
        if show_gain:
            row += [_pct(c.gains.get(t)) for t in result.tasks] + [_pct(c.delta_m)]
        rows.append(row)
    return header, rows


def _mean_pm_std(mean: float, std: float | None) -> str:
    """``0.8123 ± 0.0042``; the mean alone when the spread is undefined (one seed)."""
    if std is None or not math.isfinite(std):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def _spread_words(seeds: Sequence[int]) -> str:
    """How the table's cells read: mean ± sample std over several seeds, a single value for one."""
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}): single values, no spread"
    return f"mean ± sample std over seeds {', '.join(map(str, seeds))}"


def _pct(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{100 * v:+.2f}%"


def rich_table(result: CompareResult, metrics: Sequence[str] | None = None):
    """The comparison as a :class:`rich.table.Table`."""
    from rich.table import Table

    header, rows = _cells(result, metrics)
    n_axes = len(result.label_headers or result.axes)
    title = f"{result.recipe}: test metrics, {_spread_words(result.seeds)}"
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < n_axes else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(result: CompareResult, metrics: Sequence[str] | None = None) -> str:
    """The comparison as a GitHub Markdown table (what ``results.md`` holds)."""
    header, rows = _cells(result, metrics)
    n_axes = len(result.label_headers or result.axes)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":--" if i < n_axes else "--:" for i in range(len(header))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def describe(result: CompareResult) -> str:
    """The notes under a table: seeds, baseline, Δm definition."""
    prim = ", ".join(f"{t}: {m} ({'higher' if hib else 'lower'} is better)"
                     for t, (m, hib) in result.primary.items())
    lines = [(f"Test split; {_spread_words(result.seeds)} "
             "(the seed also reseeds the data split); a configuration with one successful seed shows its value alone. `params`: trainable parameters; "
             "`train s`: mean wall time of `fit` on the machine that ran it.")]
    if result.baseline:
        lines.append(f"Gains are relative to the baseline row ({' '.join(result.baseline)}, other settings "
                     f"equal) on each task's primary metric ({prim}), sign-aware so that positive is "
                     "better; Δm is their mean over tasks.")
    return " ".join(lines)


def write_outputs(result: CompareResult, metrics: Sequence[str] | None = None) -> None:
    """Write ``results.json`` and ``results.md`` into the output directory."""
    if result.output is None:
        return
    out = result.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result.to_json(), indent=2, default=str), encoding="utf-8")
    md = [f"```\n{result.command}\n```" if result.command else "", "", markdown_table(result, metrics), "",
          describe(result), ""]
    (out / "results.md").write_text("\n".join(md).lstrip("\n"), encoding="utf-8")

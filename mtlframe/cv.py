"""``mtlframe cv``: cross-validate a recipe (or a grid of variants) over the folds of a fold split.

    mtlframe cv recipes/adult_mmoe.yaml --folds 5 --baseline single-task --output runs/cv-adult
    mtlframe cv recipes/movielens_mmoe.yaml data.dataset.path=ml-100k --scheme predefined

Every configuration (the recipe, or each point of ``--grid``, plus the ``--baseline`` row when it
is not in the grid) is trained once per fold (and per seed with ``--seeds N``: repeated k-fold,
each seed reshuffles the folds). A fold is an ordinary recipe: ``data.split`` becomes
``{name: <scheme>, folds: K, fold: i, val: <the recipe's val>}`` (see
:func:`mtlframe.datamodule.split_indices` for the four schemes), so ``mtlframe train RECIPE
data.split.fold=3`` reproduces one fold alone. The preprocessor of each fold is fitted on that
fold's training part only.

The runs are those of :func:`mtlframe.compare.run_compare` (same grid syntax, run folders named
by a hash of the recipe under ``OUTPUT/runs/<config>-<hash>/fold-<i>``, resume: a fold whose
``metrics.json`` exists with the same recipe is not trained again; a failed fold is recorded and
does not stop the others). On top of them this module reports:

* per configuration and task metric: the mean ± sample standard deviation (``ddof=1``) over
  folds, and every fold's value;
* with a baseline, per task, the **paired difference** on the task's primary metric, fold by
  fold: ``d_k = M_k - B_k`` if higher is better, ``B_k - M_k`` if lower is better (so positive
  means the configuration beats the baseline on fold k), its mean ± std over the folds both
  finished, and ``wins``: the number of folds with ``d_k > 0``. Pairing removes the variation
  between folds that both models share (a hard fold is hard for both), so a gain that is
  consistently positive is visible even when it is smaller than the spread over folds.

Outputs: ``OUTPUT/cv.json``, ``OUTPUT/cv.md`` (the command line, the summary table, the per-fold
table) written after every finished fold, and a rich table printed at the end.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlframe.compare import (CompareResult, ConfigResult, GridAxis, Repeat, TrainFn, _fmt, _mean_pm_std,
                              _finite, _flow, mean_std, parse_seeds, run_compare)
from mtlframe.errors import MTLFrameError
from mtlframe.recipe import FOLD_SPLITS, load_recipe

__all__ = ["CVResult", "fold_repeats", "markdown_tables", "paired_differences", "rich_tables", "run_cv",
           "write_cv"]

DEFAULT_FOLDS = 5


def fold_repeats(seeds: Sequence[int], folds: int) -> list[Repeat]:
    """Seed-major repeats of folds ``1..folds``: run folders ``fold-<i>`` for one seed,
    ``seed-<s>-fold-<i>`` for several."""
    one = len(seeds) == 1
    return [Repeat(f"fold-{k}" if one else f"seed-{s}-fold-{k}", s, k) for s in seeds for k in range(1, folds + 1)]


def paired_differences(config_runs: Sequence[dict[str, Any]], baseline_runs: Sequence[dict[str, Any]],
                       task: str, metric: str, higher_is_better: bool) -> dict[str, Any]:
    """Fold-by-fold differences of ``metric`` of ``task`` between a configuration and its baseline.

    Args:
        config_runs, baseline_runs: run entries (``{"seed", "fold", "status", "metrics"}``); runs
            are paired by (seed, fold); a pair where either failed or lacks the metric is skipped.
        higher_is_better: the sign: ``d = M - B`` if true, ``B - M`` if false (positive: better).

    Returns:
        ``{"diffs": {"<seed>/<fold>": d}, "mean", "std" (ddof=1; nan for fewer than 2 pairs),
        "wins": folds with d > 0, "n": pairs}``.
    """
    def key(run: dict[str, Any]) -> str:
        return f"{run['seed']}/{run.get('fold')}"

    def value(run: dict[str, Any]) -> float | None:
        if run.get("status") != "ok":
            return None
        v = run.get("metrics", {}).get(task, {}).get(metric)
        return float(v) if v is not None and math.isfinite(float(v)) else None

    base = {key(r): value(r) for r in baseline_runs}
    diffs = {}
    for r in config_runs:
        m, b = value(r), base.get(key(r))
        if m is not None and b is not None:
            diffs[key(r)] = (m - b) if higher_is_better else (b - m)
    mean, std = mean_std(list(diffs.values()))
    return {"diffs": diffs, "mean": mean, "std": std, "wins": sum(d > 0 for d in diffs.values()), "n": len(diffs)}


@dataclass
class CVResult:
    """What :func:`run_cv` returns (and writes as ``cv.json``).

    Attributes:
        compare: the underlying :class:`~mtlframe.compare.CompareResult` (configurations, runs).
        scheme: the fold split (``kfold``, ``group-kfold``, ``time-kfold``, ``predefined``).
        folds: the number of folds.
        paired: ``{config slug: {task: paired_differences(...)}}`` for every configuration with a
            baseline other than itself.
    """

    compare: CompareResult
    scheme: str
    folds: int
    paired: dict[str, dict[str, dict[str, Any]]]

    @property
    def output(self) -> Path | None:
        return self.compare.output

    @property
    def configs(self) -> list[ConfigResult]:
        return self.compare.configs

    def to_json(self) -> dict[str, Any]:
        res = self.compare
        out = res.to_json()
        out.update(scheme=self.scheme, folds=self.folds)
        for c in out["configs"]:
            c["per_fold"] = {f"{r['seed']}/{r.get('fold')}": r.get("metrics") if r["status"] == "ok" else None
                             for r in c["runs"]}
            c["paired"] = _finite(self.paired.get(c["slug"], {}))
        return out


def _compute_paired(res: CompareResult) -> dict[str, dict[str, dict[str, Any]]]:
    by_slug = {c.slug: c for c in res.configs}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in res.configs:
        b = by_slug.get(c.baseline_slug) if c.baseline_slug else None
        if b is None or b is c:
            continue
        out[c.slug] = {t: {"metric": m, "higher_is_better": hib, **paired_differences(c.runs, b.runs, t, m, hib)}
                       for t, (m, hib) in res.primary.items()}
    return out


def _scheme_and_folds(recipe_path: str | Path, overrides: Sequence[str], scheme: str | None,
                      folds: int | None) -> tuple[str, int, dict[str, Any], int]:
    """The fold scheme, the number of folds, the ``data.split`` mapping of the CV runs and the
    recipe's seed.

    Raises:
        MTLFrameError: an unknown scheme, fewer than 2 folds, ``--folds`` that differs from the
            dataset's predefined folds, or ``predefined`` on a dataset without folds.
    """
    from mtlframe.registry import get_registry

    base = load_recipe(recipe_path, list(overrides))
    split = base.config.data.split
    scheme = scheme or (split.name if split.name in FOLD_SPLITS else "kfold")
    if scheme not in FOLD_SPLITS:
        raise MTLFrameError(f"--scheme '{scheme}' is not a fold split; choose one of {', '.join(FOLD_SPLITS)}.")
    ds_name = base.config.data.dataset["name"]
    if scheme == "predefined":
        factory = get_registry().get("dataset", ds_name).load()
        have = getattr(factory, "NUM_FOLDS", None)
        if not have:
            raise MTLFrameError(f"--scheme predefined: dataset '{ds_name}' has no predefined folds "
                                "(movielens-100k has u1..u5); use --scheme kfold, group-kfold or time-kfold.")
        if folds is not None and folds != have:
            raise MTLFrameError(f"--folds {folds}: dataset '{ds_name}' has {have} predefined folds; "
                                f"drop --folds or give --folds {have}.")
        folds = have
    elif folds is None:
        folds = split.folds if split.name in FOLD_SPLITS and "folds" in split.model_fields_set else DEFAULT_FOLDS
    if folds < 2:
        raise MTLFrameError(f"--folds must be >= 2 (got {folds}): each fold is tested by a model trained on the "
                            "other folds, so there must be at least two.")
    mapping: dict[str, Any] = {"name": scheme, "fold": 1, "val": split.val}
    if scheme != "predefined":
        mapping["folds"] = folds
    return scheme, folds, mapping, base.config.seed


def run_cv(recipe_path: str | Path, overrides: Sequence[str] = (), *, folds: int | None = None,
           scheme: str | None = None, group: str | None = None, grid: Sequence[str | GridAxis] = (),
           seeds: str | int = 1, baseline: Sequence[str] | None = None, output: str | Path | None = None,
           command: str = "", resume: bool = True, runs_dir: str | Path | None = None,
           train_fn: TrainFn | None = None, metrics: Sequence[str] | None = None,
           progress: Callable[[str], None] | None = print) -> CVResult:
    """Cross-validate every configuration over the folds. See the module docstring.

    Args:
        recipe_path: the base recipe.
        overrides: dotted overrides applied to every run (before the fold split and the grid).
        folds: the number of folds (default: the recipe's ``data.split.folds`` when it sets a fold
            split, else 5; ``predefined``: the dataset's, e.g. 5 for movielens-100k).
        scheme: ``kfold`` | ``group-kfold`` | ``time-kfold`` | ``predefined`` (default: the
            recipe's ``data.split.name`` when it is one of these, else ``kfold``).
        group: ``group-kfold``'s column (default the dataset's user column).
        grid: ``--grid`` specs as for ``compare``.
        seeds: a count or a list; each seed reshuffles the folds (repeated k-fold). Default 1.
        baseline: as for ``compare`` (a backbone name and/or ``KEY=VALUE``); default none.
        output: folder for ``runs/``, ``cv.json`` and ``cv.md`` (default ``runs/cv-<time>``).
        resume: reuse folds whose ``metrics.json`` exists with the same recipe.
        runs_dir, train_fn, metrics, progress: as for :func:`mtlframe.compare.run_compare`.

    Raises:
        MTLFrameError: an invalid scheme, number of folds, grid or override (nothing is trained).
    """
    if group is not None and (scheme or "group-kfold") != "group-kfold":
        raise MTLFrameError(f"--group applies to --scheme group-kfold, not {scheme}.")
    scheme, k, mapping, base_seed = _scheme_and_folds(recipe_path, overrides,
                                                      scheme if group is None else "group-kfold", folds)
    if group is not None:
        mapping["group"] = group
    seed_list = parse_seeds(seeds, base_seed)
    out = Path(output) if output else Path("runs") / f"cv-{time.strftime('%Y%m%d-%H%M%S')}"
    state: dict[str, CVResult] = {}

    def write(res: CompareResult) -> None:
        cv = CVResult(res, scheme, k, _compute_paired(res))
        state["cv"] = cv
        write_cv(cv)

    res = run_compare(recipe_path, grid, seeds, overrides=[*overrides, f"data.split={_flow(mapping)}"],
                      baseline=baseline or [], output=out, command=command, resume=resume, runs_dir=runs_dir,
                      train_fn=train_fn, metrics=metrics, progress=progress,
                      repeats=fold_repeats(seed_list, k), write=write)
    return state.get("cv") or CVResult(res, scheme, k, _compute_paired(res))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def _label(result: CVResult, c: ConfigResult) -> list[str]:
    headers = result.compare.label_headers or [a.header for a in result.compare.axes]
    label = [c.label.get(h, "") for h in headers]
    if c.is_baseline and label:
        label[-1] += " (baseline)"
    return label or ["recipe"]


def _cols(result: CVResult) -> list[tuple[str, str]]:
    res = result.compare
    shown = res.display_metrics
    return [(t, m) for t, ms in res.tasks.items() for m in ms if not shown or m in shown]


def summary_cells(result: CVResult) -> tuple[list[str], list[list[str]]]:
    """The summary table: per configuration, each task metric's mean ± std over folds, the folds
    finished, and with a baseline the paired difference of each task's primary metric."""
    res = result.compare
    headers = (res.label_headers or [a.header for a in res.axes]) or ["config"]
    cols = _cols(result)
    header = [*headers, *[f"{t} {m}" for t, m in cols], "folds ok"]
    paired = bool(result.paired)
    if paired:
        header += [f"paired Δ{t} {res.primary[t][0]}" for t in res.tasks] + [f"wins {t}" for t in res.tasks]
    rows = []
    for c in res.configs:
        ok = [r for r in c.runs if r["status"] == "ok"]
        cells = []
        for t, m in cols:
            st = (c.summary or {}).get("metrics", {}).get(t, {}).get(m) if ok else None
            cells.append("-" if not st or not math.isfinite(st["mean"]) else _mean_pm_std(st["mean"], st["std"]))
        row = [*_label(result, c), *cells, f"{len(ok)}/{result.folds * len(res.seeds)}"]
        if paired:
            p = result.paired.get(c.slug)
            row += [_signed_pm(p[t]["mean"], p[t]["std"]) if p else "" for t in res.tasks]
            row += [f"{p[t]['wins']}/{p[t]['n']}" if p else "" for t in res.tasks]
        rows.append(row)
    return header, rows


def per_fold_cells(result: CVResult) -> tuple[list[str], list[list[str]]]:
    """The per-fold table: one row per configuration and task metric, one column per fold."""
    res = result.compare
    # every (seed, fold) any configuration has run so far, in run order
    done = {(r["seed"], r.get("fold") or 0) for c in res.configs for r in c.runs}
    tags = [f"{s}/{f}" for s in res.seeds for f in range(1, result.folds + 1) if (s, f) in done]
    by_seed = len(res.seeds) > 1
    names = [f"seed {t.split('/')[0]} fold {t.split('/')[1]}" if by_seed else f"fold {t.split('/')[1]}"
             for t in tags]
    header = ["config", "task", "metric", *names, "mean ± std"]
    rows = []
    for c in res.configs:
        per = {f"{r['seed']}/{r.get('fold')}": r for r in c.runs}
        label = " ".join(v for v in _label(result, c) if v)
        for t, m in _cols(result):
            vals = [per.get(tag) for tag in tags]
            cells = [("FAILED" if r and r["status"] != "ok" else _fmt((r or {}).get("metrics", {}).get(t, {}).get(m)))
                     for r in vals]
            mean, std = mean_std([r["metrics"].get(t, {}).get(m) for r in vals
                                  if r and r["status"] == "ok" and r["metrics"].get(t, {}).get(m) is not None])
            rows.append([label, t, m, *cells, "-" if not math.isfinite(mean) else _mean_pm_std(mean, std)])
    return header, rows


def _signed_pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.4f}" + (f" ± {std:.4f}" if math.isfinite(std) else "")


def _md(header: list[str], rows: list[list[str]], n_left: int) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":--" if i < n_left else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _n_label(result: CVResult) -> int:
    return len(result.compare.label_headers or result.compare.axes) or 1


def describe(result: CVResult) -> str:
    """The notes under the tables: the scheme, the spread, the paired differences."""
    res = result.compare
    seeds = (f"seed {res.seeds[0]}" if len(res.seeds) == 1 else
             f"seeds {', '.join(map(str, res.seeds))} (each reshuffles the folds: repeated k-fold)")
    trained_on = ("the blocks before it in time (expanding window)" if result.scheme == "time-kfold"
                  else "the other folds")
    text = (f"{result.scheme}, {result.folds} folds, {seeds}. Each fold's test part is scored by the model trained "
            f"on {trained_on} (the preprocessor fitted on those rows only); cells are the mean ± sample std "
            "(ddof=1) over folds.")
    if result.paired:
        prim = ", ".join(f"{t}: {m} ({'higher' if hib else 'lower'} is better)" for t, (m, hib) in res.primary.items())
        text += (f" Paired Δ: fold by fold, the configuration's primary metric minus the baseline's ({' '.join(res.baseline)}"
                 f"), sign-aware so that positive is better ({prim}); mean ± std over folds; wins: folds where Δ > 0.")
    return text


def markdown_tables(result: CVResult) -> str:
    """``cv.md``'s body: the summary table, the per-fold table, the notes."""
    return "\n".join([_md(*summary_cells(result), _n_label(result)), "", "Per fold:", "",
                      _md(*per_fold_cells(result), 3), "", describe(result), ""])


def rich_tables(result: CVResult) -> list[Any]:
    """The summary and per-fold tables as :class:`rich.table.Table` objects."""
    from rich.table import Table

    out = []
    for (header, rows), n_left, title in ((summary_cells(result), _n_label(result),
                                           f"{result.compare.recipe}: {result.scheme}, {result.folds} folds, "
                                           "test metrics mean ± std over folds"),
                                          (per_fold_cells(result), 3, "per fold")):
        table = Table(title=title, min_width=len(title))  # a wrapped title splits the fold count
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i < n_left else "right")
        for row in rows:
            table.add_row(*row)
        out.append(table)
    return out


def write_cv(result: CVResult) -> None:
    """Write ``cv.json`` and ``cv.md`` into the output folder."""
    out = result.output
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "cv.json").write_text(json.dumps(_finite(result.to_json()), indent=2, default=str), encoding="utf-8")
    cmd = result.compare.command
    (out / "cv.md").write_text((f"```\n{cmd}\n```\n\n" if cmd else "") + markdown_tables(result), encoding="utf-8")

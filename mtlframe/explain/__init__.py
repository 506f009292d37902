"""``mtlframe explain``: what a trained multi-task model learned, as one self-contained report.

For a checkpoint and a split of its training run's data (re-created exactly as ``evaluate`` does,
:func:`mtlframe.run.rebuild_system`): expert utilization of gated backbones
(:mod:`~mtlframe.explain.gates`), per-task feature attributions with Integrated Gradients
(:mod:`~mtlframe.explain.attributions`), task relations (:mod:`~mtlframe.explain.relations`) and
calibration of binary tasks (:mod:`~mtlframe.explain.calibration`), written as ``report.html``
(images embedded), one PNG per figure and ``explain.json`` (:mod:`~mtlframe.explain.report`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlframe.errors import DataError, MTLFrameError, folder_problem

#: rows of the split analysed by default (the first ones, in the split's order)
DEFAULT_MAX_ROWS = 2000


@dataclass
class ExplainResult:
    """What :func:`explain` wrote: ``output`` (the folder), ``report`` (``report.html``),
    ``images`` (the PNG paths) and ``data`` (the content of ``explain.json``)."""

    output: Path
    report: Path
    images: list[Path] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def default_output(checkpoint: str | Path) -> Path:
    """``runs/<run>/explain`` for ``runs/<run>/checkpoints/<file>.ckpt``; else ``<stem>-explain``
    beside the checkpoint."""
    p = Path(checkpoint)
    if p.parent.name == "checkpoints":
        return p.parent.parent / "explain"
    return p.parent / f"{p.stem}-explain"


def _take(batch: dict, n: int) -> dict:
    rows = next(iter(batch.values())).shape[0]
    return {k: v[:n] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v for k, v in batch.items()}


def explain(checkpoint: str | Path, split: str = "test", *, output: str | Path | None = None,
            max_rows: int = DEFAULT_MAX_ROWS, accelerator: str = "auto", data_path: str | Path | None = None,
            overrides: list[str] | None = None) -> ExplainResult:
    """Explain a checkpoint on (the first ``max_rows`` rows of) a split of its recipe's data.

    Args:
        checkpoint: an mtlframe checkpoint (``runs/<run>/checkpoints/best.ckpt``).
        split: ``test`` or ``val``.
        output: the folder to write (default :func:`default_output`).
        max_rows: rows analysed (>= 1); every section uses the same rows.
        accelerator: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
        data_path, overrides: as for :func:`mtlframe.run.evaluate` (data moved; ``data.*`` overrides).

    Returns:
        an :class:`ExplainResult`; ``data`` holds ``gates``, ``attributions``, ``relations``,
        ``calibration`` and ``notes`` (sections skipped and why).

    Raises:
        MTLFrameError: ``max_rows < 1``, a bad split, an accelerator this machine lacks, an
            override outside ``data.``; captum or matplotlib missing (``pip install 'mtlframe[explain]'``).
        DataError: the data moved or changed since training (see ``rebuild_system``); an empty split.
        CheckpointError: not an mtlframe checkpoint; a task's prediction is not finite (its weights
            are not; task and rows named).
    """
    from mtlframe.explain import attributions as attr
    from mtlframe.explain import calibration as cal
    from mtlframe.explain import gates as gt
    from mtlframe.explain import relations as rel
    from mtlframe.explain.report import write_report
    from mtlframe.run import _quiet_lightning, check_finite_predictions, load_checkpoint, rebuild_system, resolve_device
    from mtlframe.tasks import to_prediction

    if split not in ("test", "val"):
        raise MTLFrameError(f"--split {split!r}: explain reads the test or the val split.")
    if int(max_rows) < 1:
        raise MTLFrameError(f"--max-rows {max_rows}: analyse at least 1 row.")
    out_dir = Path(output) if output is not None else default_output(checkpoint)
    if folder_problem(out_dir):
        raise MTLFrameError(f"--output {out_dir} {folder_problem(out_dir)}; pass a folder (it is created if missing).")
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover
        raise MTLFrameError("explain draws its figures with matplotlib: pip install 'mtlframe[explain]'") from None
    _quiet_lightning()
    device = resolve_device(accelerator)
    loaded = load_checkpoint(checkpoint)
    dm, module = rebuild_system(checkpoint, loaded, command="explain", data_path=data_path, overrides=overrides)
    if len(dm.split_index[split]) == 0:
        raise DataError(f"the recipe saved in {checkpoint} has an empty {split} split (data.split.{split}: 0); "
                        f"explain the other split (--split {'val' if split == 'test' else 'test'}).")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = module.model.to(device).eval()
    module.to(device)
    tasks = list(module.tasks)
    notes: list[str] = []
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader}[split]()
    acc = gt.GateAccumulator()
    xs, preds = [], {t.name: [] for t in tasks}
    labels = {t.name: [] for t in tasks}
    masks = {t.name: [] for t in tasks}
    grads: dict[str, list] = {}
    params = rel.shared_parameter_list(model)
    seen = 0
    for batch in loader:
        batch = module.transfer_batch_to_device(batch, device, 0)
        batch = _take(batch, int(max_rows) - seen)
        n = next(iter(batch.values())).shape[0]
        with torch.no_grad():
            x = model.encode(batch)
            out = model.forward_from(x)
        acc.add(getattr(model.backbone, "gate_weights", {}) or {})
        xs.append(x)
        for t in tasks:
            check_finite_predictions(f"{checkpoint} ({split} split)", t.name, out[t.name].detach().float().cpu().numpy(),
                                     offset=seen)
            if t.type in ("binary", "regression"):
                preds[t.name].append(to_prediction(t.type, out[t.name]).float().cpu())
            labels[t.name].append(batch[f"label/{t.name}"].float().cpu())
            m = batch.get(f"mask/{t.name}")
            masks[t.name].append(torch.ones(n, dtype=torch.bool) if m is None else m.bool().cpu())
        if params:
            with torch.enable_grad():
                rel.add_gradients(grads, rel.task_gradients(module, batch, params, training_batch=False))
        seen += n
        if seen >= max_rows:
            break
    data: dict[str, Any] = {"checkpoint": str(checkpoint), "split": split, "rows": seen,
                            "backbone": "none" if model.backbone is None else type(model.backbone).__name__,
                            "tasks": {t.name: t.type for t in tasks}}
    if any(t.type == "retrieval" for t in tasks):
        notes.append("relations: retrieval tasks are left out of the gradient cosines (their training loss needs "
                     "the training batches' in-batch negatives); track.task_gradients includes them.")
    images: list[Path] = []

    # -- gates
    if acc.sums:
        stats = gt.gate_statistics(model.backbone, acc)
        for gname, group in stats["groups"].items():
            png = out_dir / (f"gates_{gname}.png" if gname else "gates.png")
            gt.plot_heatmap(group, f"mean gate weight per expert ({gname or data['backbone']}, {seen:,} rows)", png)
            group["image"] = png.name
            images.append(png)
        data["gates"] = stats
        if isinstance(xs[0], torch.Tensor):
            stats["selectors"] = gt.selector_statistics(model.backbone, torch.cat(xs))
    else:
        data["gates"] = None
        notes.append(f"gates: the backbone {data['backbone']} has no gates (gate_weights is empty), so there is no "
                     "expert utilization to show.")

    # -- attributions
    data["attributions"] = {}
    if isinstance(xs[0], torch.Tensor):
        x_all = torch.cat(xs).float()                               # (N, D)
        baseline = x_all.mean(0)                                   # (D,)
        groups = attr.feature_groups(model.encoders, x_all.shape[1])
        for t in tasks:
            if t.type == "retrieval":
                notes.append(f"attributions: task '{t.name}' is a retrieval task (a dot product of two towers), "
                             "skipped.")
                continue
            ig = attr.integrated_gradients(model, x_all, t.name, t.type, baseline)
            summ = attr.summarize(ig, groups)
            what = {"binary": "logit", "regression": "value",
                    "multiclass": "logit of the predicted class"}[t.type]
            summ["output"] = what
            c = summ["completeness"]
            if c["mean_abs_delta"] > 0.05 * max(c["mean_abs_output_change"], 1e-12):
                notes.append(f"attributions of '{t.name}': the mean completeness gap |sum of attributions - "
                             f"(f(x) - f(baseline))| is {c['mean_abs_delta']:.3g}, over 5 % of the mean output change "
                             f"{c['mean_abs_output_change']:.3g}: the {attr.N_STEPS}-step integral is coarse for "
                             "this model; read the ranking, not the exact values.")
            png = out_dir / f"attributions_{t.name}.png"
            attr.plot_attributions(t.name, summ, what, png)
            summ["image"] = png.name
            images.append(png)
            data["attributions"][t.name] = summ
        data["attribution_baseline"] = "mean encoding of the analysed rows"
        if seen == 1:
            notes.append("attributions: 1 row analysed, and the baseline (the mean encoding of the analysed rows) "
                         "is that row, so every attribution is 0; analyse more rows (--max-rows).")
    else:
        notes.append("attributions: the encoders give each task its own input (task_specific tables); "
                     "attributing through per-task inputs is not supported yet.")

    # -- relations
    corr_preds = {t: torch.cat(v).numpy() for t, v in preds.items() if v}
    corr = rel.prediction_correlation(corr_preds) if len(corr_preds) > 1 else None
    constant = [t for t, v in corr_preds.items() if corr and np.asarray(v).std() == 0]
    if constant:
        notes.append(f"relations: {', '.join(constant)} {'predicts' if len(constant) == 1 else 'predict'} the same value "
                     f"on all {seen:,} analysed rows, so the prediction correlation is undefined (blank)"
                     + ("; analyse more rows (--max-rows)." if seen < 3 else "."))
    left_out = [t.name for t in tasks if t.type not in ("binary", "regression")]
    if left_out:
        notes.append(f"relations: {', '.join(left_out)} left out of the prediction correlation (only binary and "
                     "regression tasks have one number per row).")
    cos = rel.gradient_cosines(grads) if len(grads) > 1 else None
    data["relations"] = {"prediction_correlation": corr, "gradient_cosine": cos,
                         "shared_parameters": model.shared,
                         "shared_parameter_count": int(sum(p.numel() for p in params))}
    if corr or cos:
        png = out_dir / "relations.png"
        rel.plot_relations(corr or {}, cos, png)
        data["relations"]["image"] = png.name
        images.append(png)
    else:
        notes.append("relations: fewer than two tasks with predictions and gradients to compare.")

    # -- calibration
    data["calibration"] = {}
    for t in tasks:
        if t.type != "binary":
            continue
        m = torch.cat(masks[t.name])
        p = torch.cat(preds[t.name])[m].numpy()
        y = torch.cat(labels[t.name])[m].numpy()
        if p.size == 0:
            notes.append(f"calibration: task '{t.name}' has no labelled row among the analysed rows.")
            continue
        r = cal.reliability(p, y)
        png = out_dir / f"calibration_{t.name}.png"
        cal.plot_reliability(t.name, r, png)
        r["image"] = png.name
        images.append(png)
        data["calibration"][t.name] = r
    data["notes"] = notes
    (out_dir / "explain.json").write_text(json.dumps(_jsonable(data), indent=2))
    report = write_report(data, out_dir)
    return ExplainResult(out_dir, report, images, data)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj

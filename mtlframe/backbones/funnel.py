"""What the conversion-funnel backbones (``esmm``, ``escm2``, ``aitm``) share: their stages and labels.

A funnel is a chain of binary tasks, e.g. impression -> click -> conversion. The recipe names its
stages explicitly on the backbone (never by the order of ``tasks:``)::

    backbone: {name: esmm, click: ctr, conversion: cvr}          # two stages
    backbone: {name: aitm, funnel: [click, add_to_cart, buy]}     # any number, in funnel order

Each stage's output is an *entire-space* probability (ESMM's ``pCTCVR = pCTR x pCVR``), so the
target of stage ``k`` is the AND of the labels of stages ``1..k`` (for the conversion stage,
click AND conversion), whatever the data holds: :func:`funnel_targets` computes it, and the data
module applies it to every split (:func:`apply_funnel_labels`). A row with a conversion and no
click is counted and reported (a warning naming the task, its column and the count; an error
with the backbone's ``strict: true``).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar

import torch

from mtlframe.backbones.base import Backbone
from mtlframe.errors import ArgumentError, DataError, closest, near_hint
from mtlframe.features import label_key, mask_key


def resolve_stages(click: str | None, conversion: str | None, funnel: Sequence[str] | None,
                   task_names: Sequence[str], task_types: Mapping[str, str] | None, model: str) -> list[str]:
    """The tasks in funnel order, from the backbone's ``click``/``conversion`` or ``funnel``.

    Args:
        click, conversion: the two stages of a click -> conversion funnel.
        funnel: every stage in order (the general form; not together with ``click``/``conversion``).
        task_names: the recipe's tasks; each must be a stage.
        task_types: ``{task: type}``; every stage must be ``binary`` (``None``: not checked).
        model: the backbone's name, for messages.

    Raises:
        ArgumentError: no stages named, both forms given, an unknown or repeated task, a task left
            out of the funnel, fewer than two stages, or a stage that is not a binary task (the
            error names the parameter: ``click``, ``conversion`` or ``funnel[i]``).
    """
    tasks = list(task_names)
    if funnel is not None and (click is not None or conversion is not None):
        raise ArgumentError("funnel", f"{model}: give the stages either as click/conversion or as funnel, not both")
    if funnel is None:
        if click is None or conversion is None:
            missing = "click" if click is None else "conversion"
            raise ArgumentError(missing, (
                f"{model}: name the funnel's stages on the backbone: click: <task>, conversion: <task> (or "
                f"funnel: [<task>, ...] for more stages); the order of tasks: is not used. Tasks: {', '.join(tasks)}"))
        order, params = [click, conversion], ["click", "conversion"]
    else:
        order, params = list(funnel), [f"funnel[{i}]" for i in range(len(funnel))]
    for p, t in zip(params, order):
        if t not in tasks:
            near = closest(str(t), tasks, n=1)
            raise ArgumentError(p, f"{model}: {p} '{t}' is not a task of the recipe"
                                + near_hint(near) + f" Tasks: {', '.join(tasks)}")
    for i, (p, t) in enumerate(zip(params, order)):
        if t in order[:i]:
            raise ArgumentError(p, f"{model}: task '{t}' is named twice in the funnel ({', '.join(order)})")
    left = [t for t in tasks if t not in order]
    if left:
        raise ArgumentError(params[-1] if funnel is None else "funnel", (
            f"{model}: every task must be a stage of the funnel; {', '.join(left)} is not (funnel: "
            f"{', '.join(order)}). List it in funnel: [...] or remove the task"))
    if len(order) < 2:
        raise ArgumentError("funnel", f"{model} chains at least two tasks (e.g. click then conversion), got {order}")
    for p, t in zip(params, order):
        typ = (task_types or {}).get(t, "binary")
        if typ != "binary":
            raise ArgumentError(p, (f"{model}: {p} '{t}' is a {typ} task; a funnel's stages are binary tasks "
                                    "(each stage happens or not). Use another backbone for it"))
    return order


class FunnelBackbone(Backbone):
    """Base of the funnel backbones: resolves the stages (:func:`resolve_stages`) into
    :attr:`funnel` and keeps :attr:`strict` (a conversion without a click is an error, not a warning).

    Subclasses call :meth:`_init_funnel` in their constructor.
    """

    injected: ClassVar[tuple[str, ...]] = ("input_dim", "task_names", "task_types")
    funnel: list[str]
    strict: bool

    def _init_funnel(self, click: str | None, conversion: str | None, funnel: Sequence[str] | None,
                     strict: bool, task_names: Sequence[str], task_types: Mapping[str, str] | None) -> None:
        self.task_names = list(task_names)
        self.funnel = resolve_stages(click, conversion, funnel, self.task_names, task_types, type(self).__name__)
        self.strict = bool(strict)

    @classmethod
    def label_funnel(cls, args: Mapping[str, Any], task_names: Sequence[str],
                     task_types: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
        """``(stages in order, strict)`` from the recipe's backbone arguments (what the data module
        needs to build the stages' targets, before the backbone exists)."""
        stages = resolve_stages(args.get("click"), args.get("conversion"), args.get("funnel"), task_names,
                                task_types, cls.__name__)
        return stages, bool(args.get("strict", False))


def funnel_targets(labels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Entire-space targets of a funnel's stages: stage ``k``'s target is the AND of the labels of
    stages ``1..k``.

    A row's target is 0 when some stage up to ``k`` is a known 0, 1 when every one is a known 1,
    and missing (NaN, mask False) otherwise (e.g. a conversion with an unknown click). So a
    conversion labelled only on clicked rows becomes an entire-space CTCVR label (0 on the rows
    without a click).

    Args:
        labels: per stage in funnel order, ``[N]`` float 0/1 (NaN where missing).
        masks: per stage, ``[N]`` bool, True where the label is present.

    Returns:
        ``(targets, target_masks, violations)``: per stage ``[N]`` float and ``[N]`` bool, and the
        number of rows whose own label is 1 while an earlier stage is a known 0 (a conversion
        without a click; 0 for the first stage).
    """
    targets, out_masks, counts = [], [], []
    zero = one = None
    for y, m in zip(labels, masks):
        m = m.reshape(-1).bool()
        y = y.reshape(-1)
        is_one = m & (y == 1)
        is_zero = m & (y == 0)
        if zero is None:
            counts.append(0)
            zero, one = is_zero, is_one
        else:
            counts.append(int((is_one & zero).sum()))
            zero, one = zero | is_zero, one & is_one
        known = zero | one
        targets.append(torch.where(known, one.to(y.dtype), torch.full_like(y, float("nan"))))
        out_masks.append(known)
    return targets, out_masks, counts


def apply_funnel_labels(splits: MutableMapping[str, MutableMapping[str, Any]], stages: Sequence[str],
                        columns: Mapping[str, str], strict: bool, backbone: str, source: str) -> dict[str, list[int]]:
    """Replace the stages' labels of every split by their funnel targets (:func:`funnel_targets`).

    Args:
        splits: ``{split: {label/<task>: [N], mask/<task>: [N], ...}}``, changed in place.
        stages: the tasks in funnel order.
        columns: ``{task: label column}`` for messages.
        strict: a conversion without a click is an error (else a warning).
        backbone: the backbone's name, for messages.
        source: the data file, for messages.

    Returns:
        ``{split: [rows with a stage's label 1 and an earlier stage 0, per stage]}``.

    Raises:
        DataError: with ``strict``, a row with a later stage and no earlier one.
    """
    report: dict[str, list[int]] = {}
    for split, cols in splits.items():
        if not all(label_key(t) in cols for t in stages):
            continue
        labels = [torch.as_tensor(cols[label_key(t)]) for t in stages]
        masks = [torch.as_tensor(cols[mask_key(t)]) if mask_key(t) in cols else torch.isfinite(y)
                 for t, y in zip(stages, labels)]
        targets, new_masks, counts = funnel_targets(labels, masks)
        for t, y, m in zip(stages, targets, new_masks):
            cols[label_key(t)], cols[mask_key(t)] = y, m
        report[split] = counts
    messages = []
    for k in range(1, len(stages)):
        per = {s: c[k] for s, c in report.items() if c[k]}
        if not per:
            continue
        total = sum(per.values())
        prev, cur = stages[k - 1], stages[k]
        earlier = f"'{prev}' (column '{columns.get(prev, prev)}')" + (" or an earlier stage" if k > 1 else "")
        messages.append(
            f"{source}: {total} row{'s' if total != 1 else ''} ({', '.join(f'{s}: {n}' for s, n in per.items())}) "
            f"have task '{cur}' (column '{columns.get(cur, cur)}') = 1 while the funnel stage before it, "
            f"{earlier}, is 0 (a conversion without a click)")
    if messages:
        if strict:
            raise DataError("; ".join(messages) + f". Backbone '{backbone}' has strict: true. Fix the labels, "
                            "or set strict: false to train these rows as 0 (the stage's target is the AND of "
                            "the stages up to it).")
        warnings.warn("; ".join(messages) + f". Backbone '{backbone}' trains them as 0 (a stage's target is the "
                      "AND of the stages up to it); set strict: true on the backbone to make this an error.",
                      stacklevel=2)
    return report

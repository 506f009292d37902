"""Checking a recipe's component arguments before any data is read.

The signature check in :mod:`mtlframe.recipe` catches unknown keys and wrong types. The values
that only a component knows to be wrong (``num_experts: 0``, a text encoder's ``layer: 9`` on a
6-layer model, ``dropout: 1.5``) are checked here, the way the builder would meet them, but with
no data:

1. A component that defines the classmethod ``validate_args(args, context)`` is asked to check
   its arguments itself (``args``: every constructor parameter, the recipe's values over the
   defaults; ``context``: a :class:`ValidationContext`). It returns ``(parameter, message)``
   pairs (or raises :class:`~mtlframe.errors.ArgumentError`). Components whose constructor is
   expensive or reaches outside the process (loads model weights, downloads) define it.
2. Any other component is *probed*: built with the recipe's arguments plus stand-ins for the
   data-derived values mtlframe injects (:meth:`ValidationContext.injected`), on torch's
   ``meta`` device (parameters have shapes but no memory), then discarded.
   Task names, types and weights are the recipe's own; feature types come from the encoder's
   ``accepts``; vocabulary sizes and widths are small stand-ins.

A ``ValueError`` (or an :class:`~mtlframe.errors.MTLFrameError`) raised by either becomes a recipe
problem at the parameter's key: :class:`~mtlframe.errors.ArgumentError` names the parameter;
otherwise the first parameter name the message mentions is used, else the component's key.
Other exceptions of a probe (a stand-in the component cannot use) are ignored: the builder
meets the real values at ``train``.

Cross-component rules that need built components (sparse embedding tables with a gradient-level
combiner or gradient clipping) are checked on the probes as well.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtlframe.errors import ArgumentError, MTLFrameError
from mtlframe.features import FEATURE_TYPES, TASK_TYPES, FeatureInfo, TaskSpec
from mtlframe.registry import get_registry

log = logging.getLogger(__name__)

#: stand-in sizes used when probing components (vocabulary rows, padded length, widths, classes)
PLACEHOLDER_CARDINALITY = 8
PLACEHOLDER_MAX_LEN = 4
PLACEHOLDER_WIDTH = 16
PLACEHOLDER_CLASSES = 3


@dataclass
class ValidationContext:
    """What recipe validation knows about a recipe before any data is read.

    Passed to a component's ``validate_args(args, context)`` classmethod.

    Attributes:
        kind: the component's kind (``encoder``, ``backbone``...).
        path: its recipe key (``model.encoders[2]``); :class:`~mtlframe.errors.ArgumentError`
            params are relative to it.
        recipe: the whole recipe mapping (after overrides), for rules that span components.
        tasks: the recipe's tasks in order (name, type, label, weight; a multiclass task's
            ``num_classes`` is a stand-in, the classes are only known from the data).
        feature_types: ``column -> type`` for every column an encoder lists; the type is the
            first one the encoder ``accepts`` (the dataset's real types are checked at ``train``).
        input_dim: stand-in (or, when every encoder could be probed, the real) width of the
            encoders' output, as a backbone receives it.
        task_inputs: whether the probed encoders give per-task inputs (``task_specific`` tables).
    """

    kind: str
    path: str
    recipe: Mapping[str, Any]
    tasks: list[TaskSpec] = field(default_factory=list)
    feature_types: dict[str, str] = field(default_factory=dict)
    input_dim: int = PLACEHOLDER_WIDTH
    tower_input_dims: dict[str, int] = field(default_factory=dict)
    task_inputs: bool = False

    def feature_info(self, names: Iterable[str] | None = None) -> dict[str, FeatureInfo]:
        """Stand-in fitted features (``FeatureInfo`` with small vocabularies) for ``names``
        (default: every column the recipe's encoders list)."""
        names = list(self.feature_types) if names is None else list(names)
        data = self.recipe.get("data") if isinstance(self.recipe, Mapping) else None
        sequences = data.get("sequences") if isinstance(data, Mapping) else None
        out = {}
        for n in names:
            typ = self.feature_types.get(n, "numeric")
            categorical = typ in ("categorical", "multi_categorical", "sequence")
            # a sequence's share_with and side fields are the recipe's (data.sequences.<name>)
            seq = sequences.get(n) if typ == "sequence" and isinstance(sequences, Mapping) else None
            seq = seq if isinstance(seq, Mapping) else {}
            fields = seq.get("fields")
            out[n] = FeatureInfo(n, typ, PLACEHOLDER_CARDINALITY if categorical else 0,
                                 PLACEHOLDER_MAX_LEN if typ in ("multi_categorical", "sequence") else 0,
                                 share_with=seq.get("share_with") if isinstance(seq.get("share_with"), str) else None,
                                 fields=tuple(str(f) for f in fields) if isinstance(fields, list) else ())
        return out

    def injected(self, names: Iterable[str], task: str | None = None) -> dict[str, Any] | None:
        """Stand-ins for the injected constructor parameters ``names``; ``None`` when one of
        them is not a value mtlframe injects (the component cannot be probed)."""
        tasks = self.tasks
        first = next((t for t in tasks if t.name == task), tasks[0] if tasks else None)
        known: dict[str, Any] = {
            "feature_info": lambda: self.feature_info(),
            "tasks": lambda: list(tasks),
            "task_names": lambda: [t.name for t in tasks],
            "weights": lambda: {t.name: t.weight for t in tasks},
            "task_types": lambda: {t.name: t.type for t in tasks},
            "input_dim": lambda: (self.tower_input_dims.get(first.name, PLACEHOLDER_WIDTH)
                                  if self.kind == "tower" and first else self.input_dim),
            "output_dim": lambda: first.output_dim if first else 1,
            "task_inputs": lambda: self.task_inputs,
            "tables": lambda: None,   # shared tables are bound after every encoder is built
        }
        if any(n not in known for n in names):
            return None
        return {n: known[n]() for n in names}


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.\-]){re.escape(name)}(?![\w\-])")


def locate(exc: BaseException, params: Sequence[str]) -> str | None:
    """The parameter an error is about: :class:`ArgumentError`'s ``param``, else the parameter
    named first in the message (as a whole word), else ``None``."""
    if isinstance(exc, ArgumentError):
        return exc.param
    text = str(exc)
    found = []
    for p in params:
        m = _word(p).search(text)
        if m:
            found.append((m.start(), -len(p), p))
    return min(found)[2] if found else None


def argument_problem(exc: BaseException, kind: str, name: str, path: str,
                     params: Sequence[str]) -> tuple[str, str]:
    """``(recipe key, message)`` for an error a component raised about its arguments."""
    param = locate(exc, params)
    msg = str(exc).strip() or type(exc).__name__
    if not msg.endswith((".", "?", "!", ")")):
        msg += "."
    return (f"{path}.{param}" if param else path), f"{kind} '{name}': {msg}"


def settable_parameters(factory: Any, injected: Iterable[str] | None = None) -> list[inspect.Parameter]:
    """The constructor parameters a recipe may set: the signature less ``self``, ``name``,
    ``*args``/``**kwargs`` and the injected ones (default: the factory's ``injected``).

    Raises:
        TypeError, ValueError: the factory has no inspectable signature.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    skip = {"self", "name", *(getattr(factory, "injected", ()) if injected is None else injected)}
    return [p for n, p in inspect.signature(target).parameters.items()
            if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def parameters(factory: Any) -> list[str]:
    """Recipe-settable parameter names of a component (see :func:`settable_parameters`)."""
    try:
        return [p.name for p in settable_parameters(factory)]
    except (TypeError, ValueError):
        return []


@dataclass
class Checked:
    """A component entry that passed the signature check: what probing needs."""

    kind: str
    path: str
    spec: Mapping[str, Any]   # the recipe entry, ``name`` included
    factory: Any
    args: dict[str, Any]      # every parameter: recipe values over the defaults
    instance: Any = None
    probed: bool = False


def _tasks(recipe: Mapping[str, Any]) -> list[TaskSpec] | None:
    tasks = recipe.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return None
    out = []
    for name, t in tasks.items():
        if not isinstance(t, dict) or t.get("type") not in TASK_TYPES:
            return None
        weight = t.get("weight", 1.0)
        out.append(TaskSpec(str(name), t["type"], str(t.get("label", name)),
                            float(weight) if isinstance(weight, (int, float)) else 1.0,
                            num_classes=PLACEHOLDER_CLASSES if t["type"] == "multiclass" else 1))
    return out


def _feature_types(encoders: list[Checked]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in encoders:
        accepts = getattr(c.factory, "accepts", frozenset()) or frozenset({"numeric"})
        typ = next((t for t in FEATURE_TYPES if t in accepts), "numeric")
        feats = c.args.get("features")
        for f in feats if isinstance(feats, list) else []:
            if isinstance(f, str):
                out.setdefault(f, typ)
    return out


@contextlib.contextmanager
def _meta_device():
    """Build modules on torch's ``meta`` device (when torch is imported): shapes, no storage."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    with torch.device("meta"):
        yield


def _run(c: Checked, ctx: ValidationContext, problems: list[tuple[str, str]], task: str | None = None) -> None:
    """Run one component's own checks (``validate_args``, else a probe build)."""
    name = str(c.spec.get("name"))
    params = list(c.args)
    custom = getattr(c.factory, "validate_args", None)
    try:
        if custom is not None:
            for param, msg in custom(dict(c.args), ctx) or []:
                problems.append(argument_problem(ArgumentError(param, msg), c.kind, name, c.path, params))
            return
        wanted = tuple(getattr(c.factory, "injected", ()))
        injected = ctx.injected(wanted, task)
        if injected is None:
            return
        with _meta_device():  # parameters get shapes but no memory: a 10^7-row table costs nothing
            c.instance = c.factory(**{k: v for k, v in c.spec.items() if k != "name"}, **injected)
        c.probed = True
    except (ValueError, MTLFrameError) as exc:
        problems.append(argument_problem(exc, c.kind, name, c.path, params))
    except Exception as exc:  # noqa: BLE001 - a stand-in the component cannot use: train checks it
        log.debug("recipe validation could not probe %s at %s: %s: %s", name, c.path, type(exc).__name__, exc)


def check_arguments(recipe: Mapping[str, Any], checked: list[Checked],
                    problems: list[tuple[str, str]]) -> None:
    """Run every checked component's own argument checks; append ``(key, message)`` problems.

    Order: dataset, encoders, backbone (its input width from the probed encoders), towers (from
    the probed backbone), combiner, sampler; then the sparse-table rules.
    """
    tasks = _tasks(recipe)
    by_kind: dict[str, list[Checked]] = {}
    for c in checked:
        by_kind.setdefault(c.kind, []).append(c)
    encoders = by_kind.get("encoder", [])
    base = ValidationContext("", "", recipe, tasks or [], _feature_types(encoders))

    def ctx(c: Checked) -> ValidationContext:
        return ValidationContext(c.kind, c.path, recipe, base.tasks, base.feature_types,
                                 base.input_dim, base.tower_input_dims, base.task_inputs)

    for c in by_kind.get("dataset", []) + encoders:
        _run(c, ctx(c), problems)
    n_encoders = len(recipe.get("model", {}).get("encoders") or []) if isinstance(recipe.get("model"), dict) else 0
    if encoders and len(encoders) == n_encoders and all(c.probed for c in encoders):
        try:
            base.input_dim = sum(int(c.instance.output_dim) for c in encoders) or PLACEHOLDER_WIDTH
        except (AttributeError, TypeError, ValueError):
            pass
    ranking = recipe.get("ranking")
    if isinstance(ranking, Mapping) and encoders and len(encoders) == n_encoders:
        from mtlframe.retrieval import target_side_problems

        sides = [[f for f in (ranking.get(k) or []) if isinstance(f, str)] if isinstance(ranking.get(k), list) else []
                 for k in ("user_features", "item_features")]
        problems.extend(target_side_problems([c.instance for c in encoders], *sides))
    if tasks is None:  # the tasks themselves are invalid (reported already): nothing more to go on
        return
    per_task = [f"{c.path}.{'per_task' if 'per_task' in c.args else 'task_specific'}" for c in encoders
                if c.instance is not None and getattr(c.instance, "per_task", ())]
    base.task_inputs = bool(per_task)
    backbone_spec = (recipe.get("model") or {}).get("backbone")
    if per_task and isinstance(backbone_spec, Mapping) and by_kind.get("backbone"):
        problems.extend(task_input_conflicts(per_task, str(backbone_spec.get("name"))))
    for c in by_kind.get("backbone", []):  # the backbone serves the non-retrieval tasks only
        _run(c, ValidationContext(c.kind, c.path, recipe, [t for t in base.tasks if t.type != "retrieval"],
                                  base.feature_types, base.input_dim, base.tower_input_dims, base.task_inputs),
             problems)
        dims = getattr(c.instance, "output_dims", None)
        if isinstance(dims, Mapping):
            base.tower_input_dims = {t: int(d) for t, d in dims.items() if isinstance(d, int)}
    towers = (recipe.get("model") or {}).get("towers") or {}
    for c in by_kind.get("tower", []):
        own = c.path.rpartition(".")[2] if c.path.startswith("model.towers.") else None
        if own is None:
            uses = [t.name for t in tasks if t.name not in towers and t.type != "retrieval"]
            if not uses:
                continue
            own = uses[0]
        _run(c, ctx(c), problems, task=own)
    for c in by_kind.get("combiner", []) + by_kind.get("sampler", []) + by_kind.get("scheduler", []):
        _run(c, ctx(c), problems)
    _sparse_rules(recipe, encoders, by_kind.get("combiner", []), problems)


def _sparse_rules(recipe: Mapping[str, Any], encoders: list[Checked], combiners: list[Checked],
                  problems: list[tuple[str, str]]) -> None:
    from mtlframe.optim import sparse_conflicts, sparse_parameters

    keys = [c.path for c in encoders if c.instance is not None and sparse_parameters(c.instance)]
    if not keys:
        return
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    trainer = recipe.get("trainer") if isinstance(recipe.get("trainer"), dict) else {}
    comb = combiners[0].instance if combiners else None
    spec = recipe.get("combiner") if isinstance(recipe.get("combiner"), dict) else {}
    problems.extend(sparse_conflicts(
        keys, combiner=str(spec.get("name", "static")),
        manual_backward=bool(getattr(comb, "requires_manual_backward", False)),
        shared=str(model.get("shared", "encoders+backbone")),
        gradient_clip_val=trainer.get("gradient_clip_val")))


def task_input_conflicts(keys: Sequence[str], backbone: str) -> list[tuple[str, str]]:
    """``(key, message)`` for each encoder key with per-task tables when ``backbone`` reads only the
    shared input (no ``accepts_task_inputs``); empty when it can read them or no key is given."""
    if not keys:
        return []
    reg = get_registry()
    try:
        if getattr(reg.get("backbone", backbone).load(), "accepts_task_inputs", False):
            return []
    except Exception:  # noqa: BLE001  an unknown backbone is reported at model.backbone.name
        return []
    able = [c.name for c in reg.all("backbone") if getattr(c.load(), "accepts_task_inputs", False)]
    def msg(key: str) -> str:
        param = key.rsplit(".", 1)[-1]
        what = "per-task embedding tables" if param == "task_specific" else f"per-task encoder parameters ({param})"
        return (f"{what} need a backbone that reads per-task inputs "
                f"({', '.join(able) or 'none is registered'}); backbone '{backbone}' reads only the shared input. "
                f"Remove {param}, or change model.backbone.name.")
    return [(k, msg(k)) for k in keys]

"""Contract checks for component authors, and a tiny synthetic setup to train on in seconds.

Each ``check_<kind>`` builds a component the way mtlframe's builder does (recipe arguments plus
the injected keywords), feeds it a tiny synthetic input and checks what the rest of mtlframe
relies on: output keys, shapes, dtypes and finite values; gradient flow (every trainable
parameter gets a gradient, which DDP needs); rows that do not influence each other; a
constructor signature that works as a recipe schema (typed parameters, no ``**kwargs``); and that
:func:`mtlframe.recipe.check_component` accepts a minimal ``{name: ..., **args}`` entry and
rejects a misspelled key. A failure raises :class:`ContractError` (an ``AssertionError``, so
pytest shows it as a test failure) whose message says what is wrong and how to fix it. Every
check returns the component it built, for further assertions.

Example, in a plugin's test suite::

    from mtlframe.testing import check_encoder, train_tiny, use_plugins
    from my_pkg import plugin
    from my_pkg.encoder import HashedEncoder

    def test_contract():
        check_encoder(HashedEncoder, ["f0", "f1"], dim=8)

    def test_trains(tmp_path):
        with use_plugins(plugin):   # as if the distribution were installed
            result = train_tiny(tmp_path, **{"model.encoders[1]": {"name": "hashed",
                                                                 "features": ["cat_0"], "dim": 8}})
        assert result.metrics["test"]["task_1_bin"]["auc"] > 0.5

mtlframe's own tests run these checks over every registered component.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtlframe.features import FEATURE_TYPES, TASK_TYPES, FeatureInfo, TaskSpec, label_key, mask_key

__all__ = [
    "ContractError",
    "check",
    "check_backbone",
    "check_combiner",
    "check_dataset",
    "check_encoder",
    "check_metric",
    "check_recipe_entry",
    "check_sampler",
    "check_scheduler",
    "check_signature",
    "check_tower",
    "synthetic_columns",
    "tiny_datamodule",
    "tiny_recipe",
    "train_tiny",
    "use_plugins",
]

#: rows of the synthetic inputs (kept small: the checks run for every component in CI)
ROWS = 24
#: cardinality / padded length of synthetic categorical and multi-categorical features
CARDINALITY = 11
MULTI_LEN = 4
#: padded length of synthetic sequence features
SEQ_LEN = 5
_WORDS = ["the", "a", "dress", "fits", "great", "small", "large", "soft", "fabric", "love", "return", "color", "movie", "comedy", "drama", "star", "wars", "toy", "story", "nice", "bad"]
_SUBJECT = "contract-check-subject"


class ContractError(AssertionError):
    """A component breaks the contract of its kind. The message names the check and the fix."""


def _single_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with one torch thread: on tiny tensors more threads only add synchronization
    (on a busy machine, a 2-thread ``Linear`` on 24 rows takes milliseconds instead of microseconds)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


def _fail(factory: Any, msg: str) -> typing.NoReturn:
    raise ContractError(f"{_name(factory)}: {msg}")


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or repr(factory)


# ------------------------------------------------------------------------------------------------
# Signatures and recipe entries
# ------------------------------------------------------------------------------------------------


def check_signature(factory: Callable[..., Any]) -> list[str]:
    """Check that a factory's signature can serve as its recipe schema.

    * no ``**kwargs`` / ``*args`` sinks (a typo in a recipe must be an error, not ignored);
    * every recipe parameter annotated (injected ones may be left bare), and the annotations
      resolvable by :func:`typing.get_type_hints` (otherwise recipe validation cannot check types);
    * no parameter called ``name`` (the recipe's ``name`` key selects the component);
    * every name in the class attribute ``injected`` is a parameter (the builder passes them).

    Returns:
        the recipe parameters (the signature minus ``self`` and the injected ones).

    Raises:
        ContractError: naming the offending parameter.

    Example::

        check_signature(MMoE)   # ['num_experts', 'expert_hidden', 'dropout', 'activation', 'batch_norm']
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError) as exc:
        _fail(factory, f"has no inspectable signature ({exc}); define an explicit __init__")
    params = [p for n, p in sig.parameters.items() if n != "self"]
    sinks = [p.name for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if sinks:
        _fail(factory, f"constructor has a catch-all parameter ({', '.join('*' + s for s in sinks)}); "
                       "list every hyper-parameter explicitly so recipe typos are caught "
                       "(a class without its own __init__ inherits nn.Module's *args, **kwargs)")
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # noqa: BLE001 - any failure means unresolvable annotations
        _fail(factory, f"constructor annotations cannot be resolved ({type(exc).__name__}: {exc}); "
                       "import the types used in annotations at module level")
    injected = tuple(getattr(factory, "injected", ()))
    untyped = [p.name for p in params if p.name not in hints and p.name not in injected]
    if untyped:
        _fail(factory, f"constructor parameters without a type annotation: {', '.join(untyped)}; "
                       "annotate them (the signature is the recipe schema)")
    if any(p.name == "name" for p in params):
        _fail(factory, "has a parameter called 'name', which the recipe uses to pick the component; rename it")
    names = {p.name for p in params}
    missing = [n for n in injected if n not in names]
    if missing:
        _fail(factory, f"declares injected={injected} but the constructor lacks {', '.join(missing)}; "
                       "the builder passes every injected name as a keyword argument")
    return [p.name for p in params if p.name not in injected]


def _subject_plugin(kind: str, factory: Any) -> types.ModuleType:
    from mtlframe.hookspecs import hookimpl
    from mtlframe.registry import KINDS, ComponentSpec

    plugin = types.ModuleType("mtlframe_contract_check")
    plugin.DISTRIBUTION = "mtlframe-contract-check"  # type: ignore[attr-defined]

    def hook() -> list[ComponentSpec]:
        return [ComponentSpec(_SUBJECT, factory, "the component under a contract check")]

    hook.__name__ = KINDS[kind]
    setattr(plugin, KINDS[kind], hookimpl(hook))
    return plugin


@contextlib.contextmanager
def use_plugins(*plugins: Any, entry_points: bool = False) -> Iterator[Any]:
    """Make plugin modules (or objects with hookimpls) visible to recipes, as if installed.

    Inside the ``with`` block the process-wide registry holds the built-ins, ``plugins`` and,
    with ``entry_points=True``, the installed plugins; the previous registry is restored after.

    Args:
        plugins: plugin modules, e.g. ``my_pkg.plugin``. A module's ``DISTRIBUTION`` attribute
            names its provider (for qualified names ``my-dist:name``).
        entry_points: also load installed entry-point plugins (off by default, so a plugin that
            is also installed does not register its names twice).

    Yields:
        the :class:`~mtlframe.registry.Registry` in use.

    Example::

        with use_plugins(my_pkg.plugin):
            train_tiny(tmp_path, **{"model.backbone": {"name": "my-moe"}})
    """
    from mtlframe import registry as reg_mod

    previous = reg_mod._REGISTRY
    reg_mod._REGISTRY = reg_mod.build_registry(load_entry_points=entry_points, extra_plugins=list(plugins),
                                               strict=True)
    try:
        yield reg_mod._REGISTRY
    finally:
        reg_mod._REGISTRY = previous


def check_recipe_entry(kind: str, factory: Any, args: Mapping[str, Any]) -> None:
    """Check that recipe validation accepts ``{name: <factory>, **args}`` and rejects a typo.

    The factory is registered under a temporary name for the check, so it need not be installed.

    Raises:
        ContractError: validation reports problems for ``args``, or lets an unknown key through.

    Example::

        check_recipe_entry("backbone", MMoE, {"num_experts": 2})
    """
    from mtlframe.recipe import check_component

    with use_plugins(_subject_plugin(kind, factory)):
        problems: list[tuple[str, str]] = []
        check_component(kind, {"name": _SUBJECT, **args}, "component", "<contract check>", problems)
        if problems:
            _fail(factory, "recipe validation rejects the minimal entry "
                           f"{ {'name': '...', **dict(args)} }: " + "; ".join(f"{p}: {m}" for p, m in problems))
        if kind == "metric":
            return
        problems = []
        check_component(kind, {"name": _SUBJECT, **args, "no_such_parameter_x": 1}, "component",
                        "<contract check>", problems)
        if not problems:
            _fail(factory, "recipe validation accepted an unknown key 'no_such_parameter_x'; the constructor "
                           "signature must list every parameter explicitly (no **kwargs)")



def _check_component_class(factory: Any, kind: str, base: type, args: Mapping[str, Any]) -> None:
    """The checks every ``check_<kind>`` starts with: ``factory`` is a subclass of the kind's base
    class ``base``, its signature is one a recipe can fill, and ``args`` build it from a recipe entry.

    Raises:
        ContractError: naming the component and the first check it fails.
    """
    if not (inspect.isclass(factory) and issubclass(factory, base)):
        _fail(factory, f"a {kind} must be a subclass of {base.__module__}.{base.__qualname__}")
    check_signature(factory)
    check_recipe_entry(kind, factory, args)

def _build(kind: str, factory: Any, args: Mapping[str, Any], injected: Mapping[str, Any]) -> Any:
    """Build like :class:`mtlframe.build.Builder`: recipe args plus the injected names it declares."""
    wanted = set(getattr(factory, "injected", ()))
    extra = sorted(k for k in args if k in wanted)
    if extra:
        _fail(factory, f"{', '.join(extra)} are injected by mtlframe and must not be passed as recipe arguments")
    kwargs = dict(args)
    kwargs.update({k: v for k, v in injected.items() if k in wanted})
    try:
        return factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - reported with the arguments used
        _fail(factory, f"could not be built as a {kind} with {dict(args)} (+ injected {sorted(wanted)}): "
                       f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------------
# Tensor helpers
# ------------------------------------------------------------------------------------------------


def _finite(factory: Any, what: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        _fail(factory, f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        _fail(factory, f"{what} has non-finite values")
    return t


def _shape(factory: Any, what: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        _fail(factory, f"{what} has shape {list(t.shape)}, expected {list(shape)}")


def _float(factory: Any, what: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        _fail(factory, f"{what} must be floating point, got {t.dtype}")


def _stepped_in_backward(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters an optimizer steps inside the backward pass (torch's / TorchRec's
    ``apply_optimizer_in_backward`` marks them ``_in_backward_optimizers``): their gradient is
    consumed there, so they have no ``.grad`` afterwards."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad and hasattr(p, "_in_backward_optimizers")]


def _check_grads(factory: Any, module: nn.Module, what: str,
                 before: Mapping[str, torch.Tensor] | None = None) -> None:
    """Every trainable parameter got a finite gradient, and not all of them are zero; a parameter
    stepped inside the backward pass (``before``: its values before it) moved instead."""
    stepped = dict(_stepped_in_backward(module))
    if before is not None:
        still = [n for n, p in stepped.items() if n in before and torch.equal(p.detach(), before[n])]
        if still:
            _fail(factory, f"parameters stepped in the backward pass did not move from {what}: {', '.join(still[:8])}")
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n not in stepped]
    if not named:
        return
    missing = [n for n, p in named if p.grad is None]
    if missing:
        _fail(factory, f"parameters get no gradient from {what}: {', '.join(missing[:8])}"
                       f"{' ...' if len(missing) > 8 else ''}. Unused parameters make DDP fail; remove them, "
                       "freeze them (requires_grad=False) or use them in forward")
    bad = [n for n, p in named if not bool(torch.isfinite(p.grad).all())]
    if bad:
        _fail(factory, f"non-finite gradients in {', '.join(bad)}")
    if all(float(p.grad.abs().sum()) == 0.0 for _, p in named):
        _fail(factory, f"every parameter's gradient from {what} is zero; the output does not depend on them")


def _close(factory: Any, what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5):
        diff = (a.float() - b.float()).abs().max().item() if a.shape == b.shape else float("nan")
        _fail(factory, f"{what} (max difference {diff:.3g}). A row's output must depend only on that row "
                       "(no batch statistics in eval mode, no state carried between calls)")


def _equal(a: Any, b: Any) -> bool:
    """Equal values (tensors or arrays; NaN equals NaN; ``None`` equals only ``None``)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, np.ndarray) and a.dtype == object:
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool((a == b).all())
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if ta.shape != tb.shape or ta.dtype != tb.dtype:
        return False
    if ta.is_floating_point():
        return torch.equal(ta.isnan(), tb.isnan()) and torch.equal(ta.nan_to_num(), tb.nan_to_num())
    return torch.equal(ta, tb)


def _take(columns: Mapping[str, Any], index: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in columns.items():
        out[k] = v[torch.as_tensor(index)] if isinstance(v, torch.Tensor) else np.asarray(v)[index]
    return out


def synthetic_columns(feature_info: Mapping[str, FeatureInfo], rows: int = ROWS, seed: int = 0) -> dict[str, Any]:
    """Preprocessed columns as the data module hands them to encoders (``name -> [N]`` or ``[N, L]``).

    * ``categorical``: int64 ids in ``[0, cardinality)`` (0 = out-of-vocabulary / missing);
    * ``multi_categorical``: int64 ``[N, max_len]``, tokens left-aligned, 0 = padding, 1 = OOV;
    * ``numeric``: float32 standardized values with a heavy tail (a few values near 10) and
      exact zeros (missing values become the training mean, i.e. 0);
    * ``text``: a numpy object array of short strings, some empty;
    * ``sequence`` ``f``: int32 ``[N, max_len]`` pre-padded (0 = padding at the front, codes in
      ``[1, cardinality]``, the most recent last), some rows all padding; each side field ``g``
      under ``f:g``: float32 ``[N, max_len]``, non-decreasing along a row (usable as times), 0 at
      padding.

    Example::

        info = {"age": FeatureInfo("age", "numeric"), "city": FeatureInfo("city", "categorical", 11)}
        cols = synthetic_columns(info, rows=8)   # {"age": float32 [8], "city": int64 [8]}
    """
    g = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, info in feature_info.items():
        if info.type == "categorical":
            out[name] = torch.from_numpy(g.integers(0, max(info.cardinality, 1), rows).astype(np.int64))
        elif info.type == "multi_categorical":
            width = max(info.max_len, 1)
            ids = g.integers(1, max(info.cardinality, 2), (rows, width)).astype(np.int64)
            lengths = g.integers(0, width + 1, rows)
            ids[np.arange(width)[None, :] >= lengths[:, None]] = 0
            out[name] = torch.from_numpy(ids)
        elif info.type == "numeric":
            z = g.standard_normal(rows).astype(np.float32)
            z[g.random(rows) < 0.15] = 0.0
            z[:: max(rows // 4, 1)] = g.uniform(5.0, 12.0, len(z[:: max(rows // 4, 1)]))
            out[name] = torch.from_numpy(z)
        elif info.type == "text":
            texts = [" ".join(g.choice(_WORDS, size=int(g.integers(0, 7)))) for _ in range(rows)]
            out[name] = np.asarray(texts, dtype=object)
        elif info.type == "sequence":
            width = max(info.max_len, 1)
            ids = g.integers(1, max(info.cardinality, 1) + 1, (rows, width)).astype(np.int32)
            lengths = g.integers(0, width + 1, rows)
            lengths[:: max(rows // 3, 1)] = 0                                   # some empty histories
            pad = np.arange(width)[None, :] < (width - lengths)[:, None]        # pre-padding
            ids[pad] = 0
            out[name] = torch.from_numpy(ids)
            for fld in info.fields:
                vals = np.cumsum(g.exponential(0.05, (rows, width)), axis=1).astype(np.float32)
                vals[pad] = 0.0
                out[f"{name}:{fld}"] = torch.from_numpy(vals)
        else:  # pragma: no cover - FeatureInfo types are validated upstream
            raise ValueError(f"unknown feature type {info.type!r}")
    return out


# ------------------------------------------------------------------------------------------------
# Component checks
# ------------------------------------------------------------------------------------------------


@_single_thread
def check_encoder(factory: Callable[..., Any], features: Sequence[str] | Mapping[str, str] = ("f0", "f1"), *,
                  extra_features: Mapping[str, str] | None = None, share_with: str | None = None,
                  fields: Sequence[str] = (), **args: Any) -> Any:
    """Check an encoder (subclass of :class:`mtlframe.encoders.base.Encoder`).

    Builds it with ``features`` and ``args`` (plus ``feature_info`` for synthetic columns), runs
    the data-side :meth:`featurize` through the same path as the data module, then ``forward``.

    Args:
        factory: the encoder class.
        features: feature names, or ``{name: type}``. Names alone get the types in the encoder's
            ``accepts``, in turn (an encoder accepting two types is checked with both).
        extra_features: other columns the encoder reads, ``{name: type}`` (not in its
            ``features``: a target item, say); they get synthetic columns too, and the categorical
            ones a stand-in ``embedding`` encoder (of the encoder's ``dim``) whose table is bound
            through ``bind_tables`` (:class:`~mtlframe.encoders.tables.SharedTables`) when the
            encoder has it.
        share_with: sequence features share this extra categorical feature's table.
        fields: side fields of the sequence features (columns ``f:g``).
        args: the other recipe arguments (e.g. ``dim=8``).

    Checks: ``accepts`` is a non-empty set of feature types; ``output_dim`` a positive int;
    ``featurize`` returns tensors with one row per input row; ``forward`` on a batch gives a
    finite float ``[B, output_dim]``; every trainable parameter gets a gradient (one stepped
    inside the backward pass, ``apply_optimizer_in_backward``, moves instead); in eval mode a
    row's encoding does not depend on the other rows of the batch, nor on which split was
    featurized with it; signature and recipe entry (see :func:`check_signature`).

    Returns:
        the built encoder.

    Example::

        check_encoder(NumericEncoder, ["age", "income"], dim=4)
        check_encoder(EmbeddingEncoder, {"city": "categorical", "tags": "multi_categorical"}, dim=8)
    """
    from mtlframe.datamodule import materialize
    from mtlframe.encoders.base import Encoder

    if not (inspect.isclass(factory) and issubclass(factory, Encoder)):
        _fail(factory, "an encoder must be a subclass of mtlframe.encoders.base.Encoder")
    accepts = getattr(factory, "accepts", frozenset())
    if not accepts or not set(accepts) <= set(FEATURE_TYPES):
        _fail(factory, f"accepts={set(accepts)!r} must be a non-empty subset of {FEATURE_TYPES}")
    check_signature(factory)
    if isinstance(features, Mapping):
        types_ = dict(features)
    else:
        order = [t for t in FEATURE_TYPES if t in accepts]
        types_ = {f: order[i % len(order)] for i, f in enumerate(features)}
    bad = {f: t for f, t in types_.items() if t not in accepts}
    if bad:
        _fail(factory, f"check asked for features {bad} of types the encoder does not accept ({sorted(accepts)})")
    extra = dict(extra_features or {})
    if share_with is not None and extra.get(share_with) != "categorical":
        _fail(factory, f"share_with={share_with!r} must name a categorical feature of extra_features")

    def feature(f: str, t: str) -> FeatureInfo:
        seq = t == "sequence"
        return FeatureInfo(f, t, cardinality=CARDINALITY if "categorical" in t or seq else 0,
                           max_len=MULTI_LEN if t == "multi_categorical" else SEQ_LEN if seq else 0,
                           share_with=share_with if seq else None, fields=tuple(fields) if seq else ())

    info = {f: feature(f, t) for f, t in {**extra, **types_}.items()}
    spec = {"features": list(types_), **args}
    check_recipe_entry("encoder", factory, spec)
    torch.manual_seed(0)
    enc = _build("encoder", factory, spec, {"feature_info": info, "task_names": ["a", "b"]})
    out_dim = getattr(enc, "output_dim", None)
    if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
        _fail(factory, f"output_dim must be a positive int set in __init__, got {out_dim!r}")
    others: list[nn.Module] = []
    cats = [f for f, t in extra.items() if t == "categorical"]
    if cats and hasattr(enc, "bind_tables"):
        from mtlframe.encoders.embedding import EmbeddingEncoder
        from mtlframe.encoders.tables import SharedTables

        others.append(EmbeddingEncoder(cats, dim=int(getattr(enc, "dim", 8)), feature_info=info))
        try:
            enc.bind_tables(SharedTables([*others, enc]))
        except Exception as exc:  # noqa: BLE001
            _fail(factory, f"bind_tables refused the tables of {cats}: {type(exc).__name__}: {exc}")
    columns = synthetic_columns(info, ROWS)

    def featurized(cols: Mapping[str, Any], n: int) -> dict[str, torch.Tensor]:
        try:
            batch = materialize([enc, *others], [], cols)
        except Exception as exc:  # noqa: BLE001
            _fail(factory, f"featurize failed or returned non-tensors: {type(exc).__name__}: {exc}")
        for k, v in batch.items():
            if v.shape[:1] != (n,):
                _fail(factory, f"featurize key '{k}' has {list(v.shape)}; expected {n} rows first")
        return batch

    batch = featurized(columns, ROWS)

    def run(b: Mapping[str, torch.Tensor]) -> torch.Tensor:
        try:
            return enc(b)
        except KeyError as exc:
            _fail(factory, f"forward read the batch key {exc}, which the data module does not provide; "
                           f"list raw feature keys in `input_keys` or return derived ones from featurize "
                           f"(batch keys: {sorted(b)})")

    enc.train()
    before = {n: p.detach().clone() for n, p in _stepped_in_backward(enc)}
    out = _finite(factory, "forward output", run(batch))
    _float(factory, "forward output", out)
    _shape(factory, "forward output", out, (ROWS, out_dim))
    if out.requires_grad:
        (out * torch.randn_like(out)).sum().backward()
    _check_grads(factory, enc, "the encoder output", before)
    enc.zero_grad(set_to_none=True)
    groups = getattr(enc, "param_groups", None)
    if groups is not None:
        for g in groups(1e-3) or []:
            if not isinstance(g, Mapping) or "params" not in g:
                _fail(factory, "param_groups(lr) must return a list of optimizer group dicts with 'params'")
    enc.eval()
    with torch.no_grad():
        full = run(batch)
        half = ROWS // 2
        _close(factory, "encoding the first half of a batch alone differs from encoding it with the rest",
               run({k: v[:half] for k, v in batch.items()}), full[:half])
        idx = np.arange(1, ROWS, 3)
        sub = featurized(_take(columns, idx), len(idx))
        _close(factory, "rows featurized as a separate split encode differently", run(sub), full[torch.as_tensor(idx)])
    enc.train()
    return enc


def _toy_towers(output_dims: Mapping[str, int]) -> nn.ModuleDict:
    gen = torch.Generator().manual_seed(1)
    towers = nn.ModuleDict()
    for t, h in output_dims.items():
        lin = nn.Linear(h, 1)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.5)
        towers[t] = lin
    return towers


def _check_aux_sums(factory: Any, bb: Any, batch: Mapping[str, torch.Tensor],
                    outputs: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Check ``auxiliary_loss_sums``: ``{name: AuxLoss(sums [K], counts [K])}``, finite sums,
    counts ``>= 0``; returns the layout ``[(name, K)]``."""
    from mtlframe.backbones.base import AuxLoss

    sums = bb.auxiliary_loss_sums(batch, outputs)
    if not isinstance(sums, Mapping) or not all(isinstance(a, AuxLoss) for a in sums.values()):
        _fail(factory, "auxiliary_loss_sums must return {name: AuxLoss(sums, counts)} "
                       f"(mtlframe.backbones.base), got {sums!r}")
    layout = []
    for k, a in sums.items():
        s, c = a.sums.reshape(-1), a.counts.reshape(-1)
        if a.sums.dim() > 1 or s.shape != c.shape:
            _fail(factory, f"auxiliary loss '{k}': sums and counts must both be [K] (or scalars), got "
                           f"{tuple(a.sums.shape)} and {tuple(a.counts.shape)}")
        _finite(factory, f"auxiliary loss '{k}' sums", s)
        if bool((c < 0).any()) or not bool(torch.isfinite(c.double()).all()):
            _fail(factory, f"auxiliary loss '{k}': counts must be finite and >= 0, got {c.tolist()}")
        layout.append((k, s.numel()))
    return layout


@_single_thread
def check_backbone(factory: Callable[..., Any], *, input_dim: int = 12,
                   task_names: Sequence[str] = ("a", "b"), **args: Any) -> Any:
    """Check a backbone (subclass of :class:`mtlframe.backbones.base.Backbone`).

    Builds it with ``args`` plus the injected ``input_dim`` and ``task_names``, runs
    ``x [B, D]`` through it, through linear towers (one logit per task), its :meth:`couple`
    and :meth:`auxiliary_loss_sums` (with 0/1 labels, one task partly missing) as the model does.

    Checks: ``output_dims`` maps every task to a positive int; ``forward`` returns
    ``{task: finite [B, H_t]}``; each task's output depends on ``x``; ``couple`` keeps keys and
    shapes; auxiliary losses are ``{name: AuxLoss(sums [K], counts [K])}`` with finite sums and
    counts ``>= 0``, the same names and ``K`` on a batch without a labelled row, and finite scalar
    means (``auxiliary_loss``); every trainable parameter gets a gradient from
    the task outputs plus auxiliary losses; ``shared_parameters()`` is a subset of the parameters;
    gate weights (if any) are ``[B, E]`` rows on the simplex; in eval mode rows do not influence
    each other; signature and recipe entry.

    Returns:
        the built backbone.

    Example::

        check_backbone(MMoE, num_experts=2, expert_hidden=[8])
    """
    from mtlframe.backbones.base import Backbone

    _check_component_class(factory, "backbone", Backbone, args)
    tasks = list(task_names)
    torch.manual_seed(0)
    bb = _build("backbone", factory, args, {"input_dim": input_dim, "task_names": tasks})
    dims = getattr(bb, "output_dims", None)
    if not isinstance(dims, Mapping) or set(dims) != set(tasks):
        _fail(factory, f"output_dims must map every task {tasks} to its width, got {dims!r}")
    if any(not isinstance(h, int) or h < 1 for h in dims.values()):
        _fail(factory, f"output_dims values must be positive ints, got {dict(dims)}")
    params = {id(p) for p in bb.parameters()}
    if not {id(p) for p in bb.shared_parameters()} <= params:
        _fail(factory, "shared_parameters() yields tensors that are not parameters of the backbone")
    towers = _toy_towers(dims)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(ROWS, input_dim, generator=g, requires_grad=True)
    labels = {t: (torch.rand(ROWS, generator=g) < 0.4).float() for t in tasks}
    batch: dict[str, torch.Tensor] = {label_key(t): y for t, y in labels.items()}
    last = tasks[-1]
    batch[mask_key(last)] = torch.arange(ROWS) % 3 != 0
    batch[label_key(last)] = torch.where(batch[mask_key(last)], labels[last], torch.nan)

    def full_forward(inp: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        hs = bb(inp)
        if not isinstance(hs, Mapping) or set(hs) != set(tasks):
            _fail(factory, f"forward must return {{task: tensor}} for tasks {tasks}, got "
                           f"{sorted(hs) if isinstance(hs, Mapping) else type(hs).__name__}")
        for t in tasks:
            _finite(factory, f"forward output '{t}'", hs[t])
            _float(factory, f"forward output '{t}'", hs[t])
            _shape(factory, f"forward output '{t}'", hs[t], (inp.shape[0], dims[t]))
        outs = {t: towers[t](hs[t]).squeeze(-1) for t in tasks}      # (B,) logits, as the model does
        coupled = bb.couple(outs)
        if not isinstance(coupled, Mapping) or set(coupled) != set(tasks):
            _fail(factory, "couple() must return the same task keys it was given")
        for t in tasks:
            _finite(factory, f"couple() output '{t}'", coupled[t])
            _shape(factory, f"couple() output '{t}'", coupled[t], tuple(outs[t].shape))
        return hs, dict(coupled)

    bb.train()
    _, coupled = full_forward(x)
    for t in tasks:
        (gx,) = torch.autograd.grad(coupled[t].sum(), x, retain_graph=True)
        if float(gx.abs().sum()) == 0.0:
            _fail(factory, f"task '{t}''s output does not depend on the input x")
    layout = _check_aux_sums(factory, bb, batch, coupled)
    # a batch without a labelled row: the same names and parts (one fixed-size reduction under DDP)
    empty = {**batch, **{mask_key(t): torch.zeros(ROWS, dtype=torch.bool) for t in tasks},
             **{label_key(t): torch.full((ROWS,), float("nan")) for t in tasks}}
    if _check_aux_sums(factory, bb, empty, coupled) != layout:
        _fail(factory, "auxiliary_loss_sums must return the same names with the same number of parts on a batch "
                       "without a labelled row (zero sums and zero counts), got "
                       f"{_check_aux_sums(factory, bb, empty, coupled)} instead of {layout}")
    aux = bb.auxiliary_loss(batch, coupled)
    if not isinstance(aux, Mapping):
        _fail(factory, f"auxiliary_loss must return a dict of scalars, got {type(aux).__name__}")
    for k, v in aux.items():
        _finite(factory, f"auxiliary loss '{k}'", v)
        _shape(factory, f"auxiliary loss '{k}'", v, ())
    total = sum(c.sum() for c in coupled.values()) + sum(aux.values())
    total.backward()
    _check_grads(factory, bb, "the task outputs plus auxiliary losses")
    for name, w in getattr(bb, "gate_weights", {}).items():
        if w.dim() < 2 or w.shape[0] != ROWS or bool((w < 0).any()) or not torch.allclose(
                w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-4):
            _fail(factory, f"gate_weights['{name}'] must be [B, E] rows of non-negative weights summing to 1")
    bb.eval()
    with torch.no_grad():
        xs = x.detach()
        _, full = full_forward(xs)
        _, part = full_forward(xs[: ROWS // 2])
        for t in tasks:
            _close(factory, f"task '{t}': a half batch differs from the same rows in a full batch",
                   part[t], full[t][: ROWS // 2])
    bb.train()
    bb.zero_grad(set_to_none=True)
    return bb


@_single_thread
def check_tower(factory: Callable[..., Any], *, input_dim: int = 8, output_dim: int | None = None,
                **args: Any) -> Any:
    """Check a task tower (subclass of :class:`mtlframe.towers.base.Tower`).

    Builds it with ``args`` plus the injected ``input_dim`` and ``output_dim`` (``None`` checks
    both 1, for binary and regression tasks, and 3, for a multiclass task).

    Checks: ``forward(h [B, H])`` gives a finite float ``[B, output_dim]``; every trainable
    parameter gets a gradient, and so does ``h``; in eval mode rows do not influence each other;
    signature and recipe entry.

    Returns:
        the built tower (the last one, for ``output_dim=None``).

    Example::

        check_tower(MLPTower, hidden=[16])
    """
    from mtlframe.towers.base import Tower

    _check_component_class(factory, "tower", Tower, args)
    tower = None
    for out_dim in ([1, 3] if output_dim is None else [output_dim]):
        torch.manual_seed(0)
        tower = _build("tower", factory, args, {"input_dim": input_dim, "output_dim": out_dim})
        h = torch.randn(ROWS, input_dim, generator=torch.Generator().manual_seed(3), requires_grad=True)
        tower.train()
        y = _finite(factory, "forward output", tower(h))
        _float(factory, "forward output", y)
        _shape(factory, f"forward output (output_dim={out_dim})", y, (ROWS, out_dim))
        (y * torch.randn_like(y)).sum().backward()
        if h.grad is None or float(h.grad.abs().sum()) == 0.0:
            _fail(factory, "the output does not depend on the input h")
        _check_grads(factory, tower, "the tower output")
        tower.zero_grad(set_to_none=True)
        tower.eval()
        with torch.no_grad():
            _close(factory, "a half batch differs from the same rows in a full batch",
                   tower(h.detach()[: ROWS // 2]), tower(h.detach())[: ROWS // 2])
        tower.train()
    return tower


class _ToyModel(nn.Module):
    """A shared ``Linear`` and one linear head per task; squared-error task losses."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in tasks})

    def losses(self, x: torch.Tensor, ys: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = torch.relu(self.shared(x))                                   # (B, 6)
        self.representation = h                                          # what MGDA-UB-like methods use
        return {t: ((self.heads[t](h).squeeze(-1) - y) ** 2).mean() for t, y in ys.items()}


@_single_thread
def check_combiner(factory: Callable[..., Any], *, task_names: Sequence[str] = ("a", "b", "c"),
                   weights: Mapping[str, float] | None = None, **args: Any) -> Any:
    """Check a loss combiner (subclass of :class:`mtlframe.combiners.base.LossCombiner`).

    Trains a toy model (a shared ``Linear`` and one head per task) for a few steps the way
    :class:`mtlframe.module.MultiTaskModule` does: loss-level combiners return a total loss that
    is backpropagated; gradient-level ones (``requires_manual_backward = True``) fill ``.grad``
    themselves through the ``manual_backward`` callable (with ``representation=`` the shared
    hidden layer when they set ``requires_representation``). Also runs a step in which only the first
    task has labels, two epoch ends, an eval-mode ``forward`` (used for logging) and a
    ``state_dict`` round trip (checkpoints).

    Checks: total loss is a finite scalar with a graph; every shared parameter, every present
    task's head and every trainable combiner parameter get finite gradients; an absent task's
    head gets none; ``current_weights()`` maps task names to finite floats; signature and recipe
    entry.

    Returns:
        the built combiner, after the steps.

    Example::

        check_combiner(DWA, temperature=2.0)
    """
    from mtlframe.combiners.base import LossCombiner

    _check_component_class(factory, "combiner", LossCombiner, args)
    tasks = list(task_names)
    w = dict(weights) if weights is not None else {t: 1.0 + 0.5 * i for i, t in enumerate(tasks)}
    injected = {"task_names": tasks, "weights": w}
    torch.manual_seed(0)
    comb = _build("combiner", factory, args, injected)
    manual = bool(getattr(comb, "requires_manual_backward", False))
    model = _ToyModel(tasks)
    opt = torch.optim.SGD([*model.parameters(), *comb.parameters()], lr=0.01)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(ROWS, 4, generator=g)
    ys = {t: torch.randn(ROWS, generator=g) * (i + 1) for i, t in enumerate(tasks)}

    def step(present: Sequence[str]) -> None:
        opt.zero_grad(set_to_none=True)
        losses = model.losses(x, {t: ys[t] for t in present})
        if manual:
            try:
                extra = ({"representation": model.representation}
                         if getattr(comb, "requires_representation", False) else {})
                comb.backward(losses, list(model.shared.parameters()), lambda loss: loss.backward(), **extra)
            except Exception as exc:  # noqa: BLE001
                _fail(factory, f"backward(losses, shared_parameters, manual_backward) failed with tasks "
                               f"{list(present)}: {type(exc).__name__}: {exc}")
        else:
            total = comb(losses)
            _finite(factory, "forward (total loss)", total)
            _shape(factory, "forward (total loss)", total, ())
            if not total.requires_grad:
                _fail(factory, "forward returned a loss without a graph (detached)")
            total.backward()
        _check_grads(factory, model.shared, f"a step with tasks {list(present)}")
        for t in tasks:
            head = model.heads[t]
            got = [p.grad for p in head.parameters()]
            if t in present:
                if any(gr is None or not bool(torch.isfinite(gr).all()) for gr in got):
                    _fail(factory, f"task '{t}''s head got no (finite) gradient")
            elif any(gr is not None and float(gr.abs().sum()) != 0.0 for gr in got):
                _fail(factory, f"task '{t}' had no labels in the step but its head got a gradient")
        for n, p in comb.named_parameters():
            if p.requires_grad and p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                _fail(factory, f"combiner parameter '{n}' got a non-finite gradient")
        opt.step()
        cw = comb.current_weights()
        if not isinstance(cw, Mapping) or not set(cw) <= set(tasks) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in cw.values()):
            _fail(factory, f"current_weights() must map task names to finite floats, got {cw!r}")

    comb.train()
    for epoch in range(2):
        for _ in range(2):
            step(tasks)
        step(tasks[:1])
        comb.on_train_epoch_end({t: float(i + 1) / (epoch + 1) for i, t in enumerate(tasks)})
    comb.eval()
    with torch.no_grad():
        total = comb(model.losses(x, ys))
    _finite(factory, "forward in eval mode", total)
    _shape(factory, "forward in eval mode", total, ())
    comb.train()
    fresh = _build("combiner", factory, args, injected)
    try:
        fresh.load_state_dict(comb.state_dict())
    except Exception as exc:  # noqa: BLE001
        _fail(factory, f"state_dict() does not load into a fresh instance (checkpoints): {exc}")
    return comb


@_single_thread
def check_sampler(factory: Callable[..., Any], **args: Any) -> Any:
    """Check a training-data sampler (subclass of :class:`mtlframe.samplers.base.Sampler`).

    Builds it with ``args`` plus the injected ``feature_info`` (``user``, ``item``: categorical;
    ``x``: numeric), ``tasks`` (binary ``click``, regression ``rating``) and ``table`` (when
    declared), and samples the preprocessed columns of a tiny training split (features plus
    ``label/<task>`` and ``mask/<task>``).

    Checks: :meth:`sample` returns an :class:`~mtlframe.samplers.base.EpochSample` whose ``keep``
    is ``None`` or 1-D integer row indices within the split, and whose ``extra`` is ``None`` or
    new rows with every feature key of the input, a label and a mask for every task, one common
    row count and the input dtypes; equal generator seeds give equal samples; the input columns
    are left unchanged; ``resamples`` is a bool; signature and recipe entry. A model-side sampler
    (``side == "model"``) must not resample, and after ``prepare`` its ``negatives`` of a batch
    must give int64 extra items and finite log probabilities of the right shapes, reproducibly.

    Returns:
        the built sampler.

    Example::

        check_sampler(UniformNegatives, task="click", item_features=["item"], user_feature="user")
    """
    import pandas as pd

    from mtlframe.datasets.base import Table
    from mtlframe.samplers.base import EpochSample, Sampler

    _check_component_class(factory, "sampler", Sampler, args)
    info = {"user": FeatureInfo("user", "categorical", 9), "item": FeatureInfo("item", "categorical", 13),
            "x": FeatureInfo("x", "numeric")}
    tasks = [TaskSpec("click", "binary", "click", metrics=("auc",)),
             TaskSpec("rating", "regression", "rating", metrics=("rmse",))]
    cols: dict[str, torch.Tensor] = dict(synthetic_columns(info, ROWS))
    g = torch.Generator().manual_seed(5)
    cols[label_key("click")] = (torch.rand(ROWS, generator=g) < 0.5).float()
    cols[mask_key("click")] = torch.ones(ROWS, dtype=torch.bool)
    rating = torch.randint(1, 6, (ROWS,), generator=g).float()
    cols[mask_key("rating")] = torch.arange(ROWS) % 4 != 0
    cols[label_key("rating")] = torch.where(cols[mask_key("rating")], rating, torch.nan)
    frame = pd.DataFrame({"user": cols["user"].numpy(), "item": cols["item"].numpy(), "x": cols["x"].numpy(),
                          "click": cols[label_key("click")].numpy(), "rating": cols[label_key("rating")].numpy()})
    table = Table(frame, {"user": "categorical", "item": "categorical", "x": "numeric"}, ["click", "rating"],
                  user="user", item="item", source="<contract check>")
    sampler = _build("sampler", factory, args, {"feature_info": info, "tasks": tasks, "table": table})
    if not isinstance(getattr(sampler, "resamples", True), bool):
        _fail(factory, "resamples must be a bool")
    before = {k: v.clone() for k, v in cols.items()}
    out = sampler.sample(cols, torch.Generator().manual_seed(0))
    if not isinstance(out, EpochSample):
        _fail(factory, f"sample() must return an EpochSample(keep=..., extra=...), got {type(out).__name__}")
    if out.keep is not None:
        keep = out.keep
        if not isinstance(keep, torch.Tensor) or keep.dim() != 1 or keep.is_floating_point() or keep.dtype == torch.bool:
            _fail(factory, "EpochSample.keep must be None or a 1-D integer tensor of row indices")
        if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= ROWS):
            _fail(factory, f"EpochSample.keep has indices outside [0, {ROWS})")
    if out.extra is not None:
        extra = out.extra
        needed = set(cols)
        if not isinstance(extra, Mapping) or not needed <= set(extra):
            _fail(factory, f"EpochSample.extra must hold every input key {sorted(needed)}, a label and a mask "
                           f"per task; missing {sorted(needed - set(extra or {}))}")
        sizes = {k: len(v) for k, v in extra.items()}
        if len(set(sizes.values())) > 1:
            _fail(factory, f"EpochSample.extra columns must have one common row count, got {sizes}")
        for k in cols:
            if isinstance(extra[k], torch.Tensor) and extra[k].dtype != cols[k].dtype:
                _fail(factory, f"EpochSample.extra changed the dtype of '{k}' from {cols[k].dtype} "
                               f"to {extra[k].dtype}")
    again = sampler.sample(cols, torch.Generator().manual_seed(0))
    extra_keys = set(out.extra or {}) | set(again.extra or {})
    if not _equal(out.keep, again.keep) or (out.extra is None) != (again.extra is None) or not all(
            _equal((out.extra or {}).get(k), (again.extra or {}).get(k)) for k in extra_keys):
        _fail(factory, "sample() is not reproducible from the generator (equal seeds, different samples)")
    for k, v in before.items():
        if not _equal(v, cols[k]):
            _fail(factory, f"sample() modified its input column '{k}' in place")
    if sampler.side not in ("data", "model"):
        _fail(factory, f"side must be 'data' or 'model', got {sampler.side!r}")
    if sampler.side == "model":
        _check_model_side(factory, sampler, cols)
    return sampler


def _check_model_side(factory: Any, sampler: Any, cols: Mapping[str, torch.Tensor]) -> None:
    """A model-side sampler: ``resamples`` False; after ``prepare`` on the split, ``negatives``
    of a batch gives a :class:`~mtlframe.samplers.base.Negatives` of int64 ``extra [M]`` and
    finite float ``log_q_batch [B]`` / ``log_q_extra [M]``, reproducible from the generator."""
    from mtlframe.samplers.base import Negatives

    if sampler.resamples:
        _fail(factory, "a model-side sampler must set resamples = False (the rows are batched as they are)")
    sampler.prepare({"train": cols})
    items = torch.as_tensor(cols[sampler.item_feature])[:16]
    out = sampler.negatives(items, torch.Generator().manual_seed(0))
    if not isinstance(out, Negatives):
        _fail(factory, f"negatives() must return a Negatives(extra, log_q_batch, log_q_extra), got {type(out).__name__}")
    m = out.extra.shape[0] if out.extra.dim() == 1 else -1
    if m < 0 or out.extra.dtype != torch.long or out.log_q_batch.shape != items.shape or out.log_q_extra.shape != (m,):
        _fail(factory, f"negatives() of {len(items)} items must give extra int64 [M], log_q_batch [{len(items)}] and "
                       f"log_q_extra [M]; got {tuple(out.extra.shape)} {out.extra.dtype}, "
                       f"{tuple(out.log_q_batch.shape)}, {tuple(out.log_q_extra.shape)}")
    if not (torch.isfinite(out.log_q_batch).all() and torch.isfinite(out.log_q_extra).all()):
        _fail(factory, "negatives() gave a non-finite log sampling probability")
    again = sampler.negatives(items, torch.Generator().manual_seed(0))
    if not (_equal(out.extra, again.extra) and _equal(out.log_q_batch, again.log_q_batch)):
        _fail(factory, "negatives() is not reproducible from the generator (equal seeds, different negatives)")


@_single_thread
def check_metric(metric: Any) -> Any:
    """Check a registered metric (a :class:`mtlframe.metrics.base.MetricDef`).

    For every task type it applies to, builds the torchmetrics object, updates it twice with
    predictions in the form the module passes (probabilities ``[B]`` or ``[B, C]``, regression
    values ``[B]``; non-negative for a grouped metric, plus group ids ``[B]``), computes, resets.
    A cutoff metric is built with ``k=3``, a grouped one with ``group=None`` (the defaults of
    ``metrics_group``).

    Checks: ``task_types`` is a non-empty subset of the task types; ``higher_is_better`` is a
    bool; ``compute()`` is a finite scalar.

    Returns:
        the metric definition.

    Example::

        from mtlframe.metrics.standard import auc
        check_metric(auc)
    """
    from mtlframe.metrics.base import MetricDef

    if not isinstance(metric, MetricDef):
        _fail(metric, "a metric must be registered as a mtlframe.metrics.base.MetricDef")
    if not metric.task_types or not set(metric.task_types) <= set(TASK_TYPES):
        _fail(metric, f"task_types={metric.task_types!r} must be a non-empty subset of {TASK_TYPES}")
    if not isinstance(metric.higher_is_better, bool):
        _fail(metric, "higher_is_better must be a bool")
    g = torch.Generator().manual_seed(6)
    for ttype in metric.task_types:
        task = TaskSpec("t", ttype, "t", num_classes=3 if ttype == "multiclass" else 1,
                        classes=("x", "y", "z") if ttype == "multiclass" else ())
        options: dict[str, Any] = {"k": 3} if metric.cutoff else {}
        if metric.grouped:
            options["group"] = None
        m = metric(task, **options)
        for _ in range(2):
            if ttype == "binary":
                preds, target = torch.rand(ROWS, generator=g), torch.arange(ROWS) % 2
            elif ttype == "multiclass":
                preds = torch.softmax(torch.randn(ROWS, 3, generator=g), -1)
                target = torch.arange(ROWS) % 3
            else:
                preds, target = torch.randn(ROWS, generator=g), torch.randn(ROWS, generator=g)
            if metric.grouped:  # four groups, each with both labels; relevance >= 0
                m.update(preds, target.abs(), torch.arange(ROWS) // 2 % 4)
            else:
                m.update(preds, target)
        value = torch.as_tensor(m.compute())
        if value.numel() != 1 or not bool(torch.isfinite(value).all()):
            _fail(metric, f"compute() for a {ttype} task must be a finite scalar, got {value}")
        m.reset()
    return metric


def check_scheduler(factory: Callable[..., Any], *, total_steps: int = 20, **args: Any) -> Any:
    """Check a learning-rate schedule (subclass of :class:`mtlframe.schedulers.base.LRSchedule`).

    Builds it with ``args`` over an optimizer with two parameter groups at different rates (a
    dense group and a sparse-table group, as :class:`~mtlframe.optim.HybridOptimizer` has) and
    steps it ``total_steps`` times (a monitored value for ``needs_monitor`` schedules).

    Checks: signature and recipe entry; ``default_interval`` is one of its ``intervals``, each
    ``step`` or ``epoch``; :meth:`build` returns a ``torch.optim.lr_scheduler`` scheduler; every
    rate stays finite and >= 0; both groups are scheduled by the same factor (their ratio kept,
    ``onecycle`` and ``plateau`` included); the optimizer's and the schedule's ``state_dict``
    loaded into a fresh build continue the same rates (what ``train --resume`` relies on).

    Returns:
        the built schedule.

    Example::

        check_scheduler(Cosine, warmup=5)
    """
    from mtlframe.schedulers.base import INTERVALS, LRSchedule

    _check_component_class(factory, "scheduler", LRSchedule, args)
    if factory.default_interval not in factory.intervals or not set(factory.intervals) <= set(INTERVALS):
        _fail(factory, f"default_interval {factory.default_interval!r} must be one of intervals "
                       f"{factory.intervals!r}, each of {INTERVALS}")
    schedule = _build("scheduler", factory, args, {})

    def run(steps: int, state: Any = None) -> tuple[list[tuple[float, float]], Any, Any]:
        params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
        opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.02}], lr=0.1)
        sch = schedule.build(opt, total_steps)
        if state is not None:  # as Lightning resumes: the optimizer's state (its groups' rates), then the schedule's
            opt.load_state_dict(state[0])
            sch.load_state_dict(state[1])
        if not hasattr(sch, "step") or not hasattr(sch, "state_dict"):
            _fail(factory, f"build() returned {type(sch).__name__}, not a torch.optim.lr_scheduler scheduler")
        rates = []
        for t in range(steps):
            opt.step()
            sch.step(1.0) if factory.needs_monitor else sch.step()   # a value that never improves
            rates.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return rates, (opt.state_dict(), sch.state_dict()), opt

    half = total_steps // 2
    whole, _, _ = run(total_steps - 1)
    first, state, _ = run(half)
    second, _, _ = run(total_steps - 1 - half, state)
    for a, b in whole:
        if not (math.isfinite(a) and math.isfinite(b) and a >= 0 and b >= 0):
            _fail(factory, f"gives a non-finite or negative learning rate ({a}, {b})")
        if not math.isclose(a, 5 * b, rel_tol=1e-6, abs_tol=1e-12):
            _fail(factory, f"does not keep the groups' ratio (rates {a} and {b} from 0.1 and 0.02): every group "
                           "must follow the same factor of its own rate")
    if [round(a, 12) for a, _ in first + second] != [round(a, 12) for a, _ in whole]:
        _fail(factory, "state_dict / load_state_dict into a fresh build does not continue the same rates")
    return schedule


def check_dataset(factory: Callable[..., Any], **args: Any) -> Any:
    """Check a dataset loader (subclass of :class:`mtlframe.datasets.base.RecDataset`).

    Builds it with ``args``, calls :meth:`prepare` and :meth:`load`.

    Checks: ``load()`` returns a :class:`~mtlframe.datasets.base.Table` with rows, at least one
    feature and one label column, labels that are numeric or text (multiclass); signature and
    recipe entry.

    Returns:
        the loaded table.

    Example::

        table = check_dataset(Synthetic, num_rows=100)
    """
    import pandas as pd

    from mtlframe.datasets.base import RecDataset, Table

    _check_component_class(factory, "dataset", RecDataset, args)
    ds = _build("dataset", factory, args, {})
    ds.prepare()
    table = ds.load()
    if not isinstance(table, Table):
        _fail(factory, f"load() must return a mtlframe.datasets.base.Table, got {type(table).__name__}")
    if len(table.frame) == 0 or not table.features or not table.labels:
        _fail(factory, f"load() returned {len(table.frame)} rows, {len(table.features)} features, "
                       f"{len(table.labels)} labels; each must be at least one")
    for col in table.labels:
        s = table.frame[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_string_dtype(s) or s.dtype == object):
            _fail(factory, f"label column '{col}' has dtype {s.dtype}; use numbers (NaN = missing) or strings")
    return table


_CHECKS: dict[str, Callable[..., Any]] = {
    "encoder": check_encoder, "backbone": check_backbone, "tower": check_tower,
    "combiner": check_combiner, "sampler": check_sampler, "dataset": check_dataset,
    "scheduler": check_scheduler,
}


def check(kind: str, factory: Any, **args: Any) -> Any:
    """Run the contract check of ``kind`` on ``factory`` (a class, or a ``MetricDef`` for metrics).

    Example::

        component = get_registry().get("backbone", "mmoe")
        check("backbone", component.load(), num_experts=2)
    """
    if kind == "metric":
        if args:
            raise TypeError("check_metric takes no arguments")
        return check_metric(factory)
    try:
        fn = _CHECKS[kind]
    except KeyError:
        raise ValueError(f"unknown component kind '{kind}'; kinds are {', '.join([*_CHECKS, 'metric'])}") from None
    return fn(factory, **args)


# ------------------------------------------------------------------------------------------------
# A tiny synthetic recipe and data module
# ------------------------------------------------------------------------------------------------


_TINY: dict[str, Any] = {
    "seed": 2026,
    "data": {
        "dataset": {"name": "synthetic", "num_rows": 2000, "num_features": 8, "num_categorical": 1,
                    "categorical_cardinality": 20, "correlation": 0.5, "seed": 0},
        "split": {"name": "random", "val": 0.1, "test": 0.1},
        "batch_size": 256,
    },
    "tasks": {
        "task_0": {"type": "regression", "label": "task_0"},
        "task_1_bin": {"type": "binary", "label": "task_1_bin"},
    },
    "model": {
        "encoders": [
            {"name": "numeric", "features": [f"x_{i:03d}" for i in range(8)]},
            {"name": "embedding", "features": ["cat_0"], "dim": 4},
        ],
        "backbone": {"name": "mmoe", "num_experts": 2, "expert_hidden": [16]},
        "tower": {"name": "mlp", "hidden": [8]},
    },
    "combiner": {"name": "static"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                "log_every_n_steps": 1},
    "logger": {"name": "none"},
}


def tiny_recipe(**overrides: Any) -> dict:
    """A recipe mapping that trains one epoch on 2,000 synthetic rows in a few seconds on a CPU.

    Data: the ``synthetic`` dataset (MMoE paper's generator) with numeric features
    ``x_000 .. x_007`` and one categorical ``cat_0`` (20 ids); tasks ``task_0`` (regression) and
    ``task_1_bin`` (binary). Model: ``numeric`` + ``embedding`` encoders, a small ``mmoe``,
    ``mlp`` towers. CPU, one epoch, no logger, no progress bar.

    Args:
        overrides: ``path=value`` replacements. A path is a top-level key or a dotted path, with
            ``[i]`` for list items; since Python keywords cannot hold dots, ``__`` also separates
            (``trainer__max_epochs=2`` is ``trainer.max_epochs``). Values are Python objects.

    Returns:
        a fresh mapping; validate it with :func:`mtlframe.recipe.recipe_from_dict`.

    Example::

        tiny_recipe(**{"model.backbone": {"name": "ple"}}, combiner={"name": "dwa"})
        tiny_recipe(model__encoders__0={"name": "log-numeric", "features": ["x_000"], "dim": 4})
    """
    from mtlframe.recipe import _split_path

    data = copy.deepcopy(_TINY)
    for key, value in overrides.items():
        parts = _split_path(key.replace("__", "."))
        node: Any = data
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
        if isinstance(node, list):
            idx = int(parts[-1])
            if idx == len(node):
                node.append(copy.deepcopy(value))
            else:
                node[idx] = copy.deepcopy(value)
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return data


def tiny_datamodule(recipe: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """The :class:`~mtlframe.datamodule.RecDataModule` of a tiny recipe, set up for fitting.

    Args:
        recipe: a recipe mapping (default :func:`tiny_recipe` with ``overrides``).

    Returns:
        the data module after ``prepare_data()`` and ``setup("fit")``: ``feature_info()``,
        ``task_specs()`` and the preprocessed ``splits`` are ready; call ``attach_encoders``
        before asking for dataloaders.

    Example::

        dm = tiny_datamodule()
        dm.feature_info()["cat_0"].cardinality   # 21 (20 ids + the OOV row)
    """
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule
    from mtlframe.recipe import recipe_from_dict

    rec = recipe_from_dict(dict(recipe) if recipe is not None else tiny_recipe(**overrides), "<tiny recipe>")
    dm = RecDataModule(rec, Builder(rec).dataset())
    dm.prepare_data()
    dm.setup("fit")
    return dm


@_single_thread
def train_tiny(run_dir: str | Path, recipe: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """Train a tiny recipe for its epochs and evaluate it; see :func:`mtlframe.run.train`.

    Runs with one torch thread (faster than several on a model this small).

    Args:
        run_dir: output folder (``metrics.json``, ``recipe.yaml``, ``checkpoints/best.ckpt``).
        recipe: a recipe mapping (default :func:`tiny_recipe` with ``overrides``).

    Returns:
        the :class:`~mtlframe.run.TrainResult`; ``result.metrics["test"]["task_1_bin"]["auc"]``.

    Example::

        result = train_tiny(tmp_path, **{"model.backbone": {"name": "my-moe"}})
    """
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import train

    rec = recipe_from_dict(dict(recipe) if recipe is not None else tiny_recipe(**overrides), "<tiny recipe>")
    return train(rec, run_dir, progress=False)


def run_process_group(args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run ``args`` (a launcher of several training processes, say) in its own process group and
    return its output (stdout and stderr); fail the calling test, killing the whole group, when it
    runs past ``timeout`` seconds (a hung DDP rank) or exits non-zero, with the end of the output.
    """
    import os
    import signal
    import subprocess

    import pytest

    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=None if env is None else dict(env), start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args[:3]))} hung (killed after {timeout:g} s):\n{log[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args[:3]))} exited with {proc.returncode}:\n{log[-3000:]}")
    return log


class RankBatches:
    """Fixed global batches, each cut into the running process's contiguous share when iterated:
    with ``W`` processes, rank ``r`` gets rows ``[r·s, (r+1)·s)`` of every batch (``s = ceil(n / W)``),
    with one process the whole batch. A DDP run on them equals one process trained on the global
    batches (the mean of the processes' gradients is the gradient of the mean loss when the shares
    are equal).

    Args:
        batches: the global batches (``{name: [n, ...] tensor}`` each).
        trainer_box: a list that holds the Lightning ``Trainer`` (appended after it is built) whose
            ``world_size`` and ``global_rank`` pick the share.
    """

    def __init__(self, batches: Sequence[Mapping[str, torch.Tensor]], trainer_box: list) -> None:
        self.batches, self.box = batches, trainer_box

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Mapping[str, torch.Tensor]]:
        trainer = self.box[0]
        world, rank = trainer.world_size, trainer.global_rank
        for b in self.batches:
            share = -(-len(next(iter(b.values()))) // world)
            yield b if world == 1 else {k: v[rank * share:(rank + 1) * share] for k, v in b.items()}

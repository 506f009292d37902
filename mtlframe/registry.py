"""Component registries, filled by pluggy hooks from built-ins and entry-point plugins.

One registry per component kind (``dataset``, ``encoder``, ``backbone``, ``tower``, ``combiner``,
``sampler``, ``metric``, ``scheduler``). Built-ins are registered by :mod:`mtlframe.builtins` through the same
hooks as third-party plugins, which are discovered from the ``mtlframe`` entry-point group.

Environment variables:
    ``MTLFRAME_STRICT_PLUGINS=1``  a plugin that fails to import raises instead of warning.
    ``MTLFRAME_DISABLE_PLUGINS=a,b`` skip these entry points (by entry-point or distribution name).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pluggy

from mtlframe import hookspecs
from mtlframe.hookspecs import ComponentSpec  # noqa: F401  (re-exported: the hooks' record type)
from mtlframe.errors import (ComponentConflictError, PluginLoadError, UnknownComponentError,
                             closest)

#: component kind -> hook name
KINDS: dict[str, str] = {
    "dataset": "mtlframe_datasets",
    "encoder": "mtlframe_encoders",
    "backbone": "mtlframe_backbones",
    "tower": "mtlframe_towers",
    "combiner": "mtlframe_combiners",
    "sampler": "mtlframe_samplers",
    "metric": "mtlframe_metrics",
    "scheduler": "mtlframe_schedulers",
}

ENTRY_POINT_GROUP = "mtlframe"
BUILTIN_PROVIDER = "mtlframe"


@dataclass(frozen=True)
class Provider:
    """Who provides a component: a distribution name and version (``mtlframe 0.1.0``)."""

    plugin: str  # plugin (entry point) name as registered with pluggy
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Component:
    """A registered component: its spec, kind and provider."""

    kind: str
    spec: ComponentSpec
    provider: Provider

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qualified_name(self) -> str:
        return f"{self.provider.distribution}:{self.spec.name}"

    def load(self) -> Callable[..., Any]:
        """Import (if lazy) and return the factory.

        Raises:
            PluginLoadError: the lazy import path does not resolve.
        """
        factory = self.spec.factory
        if not isinstance(factory, str):
            return factory
        module_name, _, attr = factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - reported with the provider
            raise PluginLoadError(
                f"{self.kind} '{self.name}' from {self.provider} could not be loaded from "
                f"'{factory}': {type(exc).__name__}: {exc}. Reinstall or upgrade "
                f"{self.provider.distribution}.") from exc
        return obj


@dataclass(frozen=True)
class LoadFailure:
    """A plugin entry point that failed to import (or whose hook failed).

    ``components`` lists the ``kind:name`` components the plugin's source declares (literal
    ``ComponentSpec("name", ...)`` records inside its hook functions, read without running it), so
    a recipe that needs one of them is told it comes from this plugin and why it failed.
    """

    entry_point: str
    distribution: str
    version: str
    error: str
    components: tuple[str, ...] = ()

    def __str__(self) -> str:
        provides = f" (it provides {', '.join(self.components)})" if self.components else ""
        return f"{self.distribution} {self.version} (entry point '{self.entry_point}'): {self.error}{provides}"


@dataclass
class Registry:
    """All components of all kinds, with their providers and the plugins that failed to load."""

    components: dict[str, list[Component]] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)
    plugins: dict[str, Provider] = field(default_factory=dict)

    # -- queries ----------------------------------------------------------------------------
    def all(self, kind: str) -> list[Component]:
        self._check_kind(kind)
        return sorted(self.components.get(kind, []), key=lambda c: (c.name, c.provider.distribution))

    def names(self, kind: str) -> list[str]:
        return sorted({c.name for c in self.all(kind)})

    def get(self, kind: str, name: str, where: str | None = None) -> Component:
        """Resolve a bare (``mmoe``) or qualified (``mtlframe:mmoe``) name.

        Args:
            kind: component kind, one of :data:`KINDS`.
            name: the name from the recipe.
            where: where the name was written (``"recipe r.yaml, key model.backbone.name"``),
                used in error messages.

        Raises:
            UnknownComponentError: no provider registers the name.
            ComponentConflictError: a bare name is registered by two or more providers.
            PluginLoadError: the name is qualified with a plugin that failed to load.
        """
        self._check_kind(kind)
        candidates = self.all(kind)
        if ":" in name:
            dist, _, bare = name.partition(":")
            found = [c for c in candidates if c.name == bare and
                     dist in (c.provider.distribution, c.provider.plugin, c.provider.plugin.rpartition(":")[2])]
            if not found:
                for failure in self.failures:
                    if dist in (failure.distribution, failure.entry_point):
                        raise PluginLoadError(
                            f"{kind} '{name}'{self._where(where)} comes from a plugin that failed "
                            f"to load: {failure}. Fix or reinstall it (pip install -U "
                            f"{failure.distribution}).")
        else:
            found = [c for c in candidates if c.name == name]
            for failure in self.failures if not found else []:
                if f"{kind}:{name}" in failure.components:
                    raise PluginLoadError(
                        f"{kind} '{name}'{self._where(where)} comes from plugin '{failure.entry_point}' "
                        f"({failure.distribution} {failure.version}), which failed to load: {failure.error}. "
                        f"Fix or reinstall it (pip install -U {failure.distribution}); `mtlframe plugins` "
                        f"lists the failure.")
        if len(found) > 1:
            providers = ", ".join(f"{c.qualified_name} ({c.provider})" for c in found)
            raise ComponentConflictError(
                f"{kind} name '{name}'{self._where(where)} is registered by {len(found)} plugins: "
                f"{providers}. Write a qualified name to choose one, e.g. '{found[0].qualified_name}', "
                f"or uninstall one of them.")
        if found:
            return found[0]
        raise UnknownComponentError(self._unknown_message(kind, name, where))

    def describe(self, kind: str) -> str:
        return ", ".join(f"{c.name} ({c.provider.distribution})" for c in self.all(kind)) or "none"

    # -- helpers ----------------------------------------------------------------------------
    def _unknown_message(self, kind: str, name: str, where: str | None) -> str:
        names = self.names(kind)
        near = closest(name.partition(":")[2] or name, names)
        msg = f"unknown {kind} '{name}'{self._where(where)}."
        if near:
            msg += " Did you mean " + " or ".join(f"'{n}'" for n in near) + "?"
        msg += f" Available {kind}s: {self.describe(kind)}."
        if self.failures:
            msg += (" These plugins failed to load and may provide it: "
                    + "; ".join(str(f) for f in self.failures) + ".")
        msg += " Run `mtlframe plugins` to list every component; install a plugin that adds it."
        return msg

    @staticmethod
    def _where(where: str | None) -> str:
        return f" ({where})" if where else ""

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}")


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.name, "?"
    return dist.metadata["Name"] or ep.name, dist.version or "?"


def _declared_components(source: str) -> tuple[str, ...]:
    """``kind:name`` of each literal ``ComponentSpec("name", ...)`` inside a hook function of
    ``source`` (a plugin module's text); parsed, never run."""
    hooks = {hook: kind for kind, hook in KINDS.items()}
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    out: list[str] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name not in hooks:
            continue
        for call in ast.walk(fn):
            if not isinstance(call, ast.Call):
                continue
            callee = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            name = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "name"), None)
            if callee == "ComponentSpec" and isinstance(name, ast.Constant) and isinstance(name.value, str):
                out.append(f"{hooks[fn.name]}:{name.value}")
    return tuple(dict.fromkeys(out))


def _module_source(module: str) -> str:
    """The source text of ``module`` (``pkg.sub.mod``) found on ``sys.path`` without importing it
    (nor its parent packages, which may be what fails); ``""`` when it cannot be found."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    parts = module.split(".")[1:]
    roots = list(spec.submodule_search_locations or [])
    if not parts:
        files = [spec.origin] if spec.origin else []
    else:
        files = [str(Path(r, *parts[:-1], parts[-1] + ".py")) for r in roots]
        files += [str(Path(r, *parts, "__init__.py")) for r in roots]
    for f in files:
        try:
            return Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return ""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def build_registry(*, load_entry_points: bool = True, extra_plugins: list[Any] | None = None,
                   strict: bool | None = None) -> Registry:
    """Build a registry from the built-ins, entry-point plugins and ``extra_plugins``.

    Entry points are loaded one at a time: a plugin that fails to import is recorded in
    :attr:`Registry.failures` and warned about once, unless strict mode is on.

    Args:
        load_entry_points: discover plugins in the ``mtlframe`` entry-point group.
        extra_plugins: plugin modules or objects to register as well (tests use this).
        strict: raise on a failing plugin; defaults to ``MTLFRAME_STRICT_PLUGINS``.

    Raises:
        PluginLoadError: in strict mode, when a plugin fails to import or its hook fails.
    """
    from mtlframe import __version__, builtins

    strict = _truthy(os.environ.get("MTLFRAME_STRICT_PLUGINS")) if strict is None else strict
    disabled = {s.strip() for s in os.environ.get("MTLFRAME_DISABLE_PLUGINS", "").split(",") if s.strip()}

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    providers: dict[str, Provider] = {}

    pm.register(builtins, name=BUILTIN_PROVIDER)
    providers[BUILTIN_PROVIDER] = Provider(BUILTIN_PROVIDER, "mtlframe", __version__)

    def fail(ep_name: str, dist: str, version: str, exc: BaseException, source: str = "") -> None:
        err = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        failure = LoadFailure(ep_name, dist, version, err, _declared_components(source))
        registry.failures.append(failure)
        if strict:
            raise PluginLoadError(f"plugin failed to load: {failure}") from exc
        warnings.warn(f"mtlframe plugin failed to load and is skipped: {failure}. "
                      "Run `mtlframe plugins` for details.", RuntimeWarning, stacklevel=3)

    if load_entry_points:
        eps = [(ep, *_dist_of(ep)) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
        dists_of_name: dict[str, set[str]] = {}
        for ep, dist, _ in eps:
            dists_of_name.setdefault(ep.name, set()).add(dist)
        seen: set[tuple[str, str]] = set()
        for ep, dist, version in eps:
            if (ep.name, dist) in seen or ep.name in disabled or dist in disabled:
                continue
            seen.add((ep.name, dist))
            # two distributions may name their entry points alike: both load, each under
            # "distribution:name" (a clash between their components is reported when one is used)
            key = ep.name
            if len(dists_of_name[ep.name]) > 1 or key in providers:
                key = f"{dist}:{ep.name}"
            try:
                plugin = ep.load()
                pm.register(plugin, name=key)
            except Exception as exc:  # noqa: BLE001 - isolate one broken plugin
                fail(ep.name, dist, version, exc, _module_source(getattr(ep, "value", "").partition(":")[0]))
                continue
            providers[key] = Provider(key, dist, version)

    for i, plugin in enumerate(extra_plugins or []):
        name = getattr(plugin, "__name__", f"extra-{i}")
        pm.register(plugin, name=name)
        providers[name] = Provider(name, getattr(plugin, "DISTRIBUTION", name),
                                   getattr(plugin, "VERSION", "0"))

    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            provider = providers[impl.plugin_name]
            try:
                specs = impl.function() or []
                for spec in specs:
                    if not isinstance(spec, ComponentSpec):
                        raise TypeError(f"{hook_name} must return ComponentSpec records, got {spec!r}")
            except Exception as exc:  # noqa: BLE001
                try:
                    source = inspect.getsource(inspect.getmodule(impl.function) or impl.function)
                except (OSError, TypeError):
                    source = ""
                fail(provider.plugin, provider.distribution, provider.version, exc, source)
                continue
            for spec in specs:
                registry.components.setdefault(kind, []).append(Component(kind, spec, provider))
    registry.plugins = providers
    return registry


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the cached registry (after installing a plugin in-process, and in tests)."""
    global _REGISTRY
    _REGISTRY = None

"""Registries and plugins: built-ins through the hooks, unknown and conflicting names, broken
plugins, the contract check over every registered component, and documented hooks/components."""
from __future__ import annotations

import inspect
import json
import re
import textwrap
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mtlframe
from mtlframe import builtins, hookspecs, testing
from mtlframe import registry as registry_mod
from mtlframe.backbones.base import AuxLoss, Backbone
from mtlframe.encoders.base import Encoder
from mtlframe.errors import ComponentConflictError, PluginLoadError, RecipeError, UnknownComponentError
from mtlframe.features import mask_key
from mtlframe.hookspecs import hookimpl
from mtlframe.recipe import recipe_from_dict
from mtlframe.registry import KINDS, ComponentSpec, LoadFailure, build_registry
from mtlframe.towers.base import Tower

REPO = Path(__file__).resolve().parents[1]
BUILTINS = build_registry(load_entry_points=False, strict=True)


def _plugin(module_name: str, distribution: str, **hooks) -> types.ModuleType:
    """A plugin module whose hooks return the given specs: ``_plugin(..., mtlframe_towers=[spec])``."""
    mod = types.ModuleType(module_name)
    mod.DISTRIBUTION = distribution
    mod.VERSION = "1.0"
    for hook_name, specs in hooks.items():
        def impl(specs=specs):
            return list(specs)
        impl.__name__ = hook_name
        setattr(mod, hook_name, hookimpl(impl))
    return mod


# -- built-ins come through the same hooks as plugins -------------------------------------------

def test_builtins_are_registered_through_the_hooks_by_the_default_plugin():
    for kind, hook_name in KINDS.items():
        impl = getattr(builtins, hook_name)
        assert hasattr(impl, "mtlframe_impl"), f"builtins.{hook_name} is not a @hookimpl"
        comps = BUILTINS.all(kind)
        assert comps, f"no built-in {kind}"
        assert [c.name for c in comps] == sorted(s.name for s in impl())
        for c in comps:
            assert c.provider.plugin == "mtlframe" and c.provider.distribution == "mtlframe"
            assert c.provider.version == mtlframe.__version__
            assert isinstance(c.spec.factory, str), f"{kind} '{c.name}': built-in factories are lazy strings"
            assert c.spec.summary, f"{kind} '{c.name}' has no summary"
    assert BUILTINS.failures == []
    assert list(BUILTINS.plugins) == ["mtlframe"]


def test_process_registry_has_the_builtins_with_their_provider():
    reg = mtlframe.get_registry()
    for kind in KINDS:
        for c in BUILTINS.all(kind):
            assert reg.get(kind, f"mtlframe:{c.name}").provider.distribution == "mtlframe"


# -- unknown names --------------------------------------------------------------------------------

def test_unknown_name_lists_closest_match_available_names_and_the_command():
    with pytest.raises(UnknownComponentError) as info:
        BUILTINS.get("backbone", "mmeo", where="recipe r.yaml, key model.backbone.name")
    msg = str(info.value)
    assert "unknown backbone 'mmeo'" in msg
    assert "recipe r.yaml, key model.backbone.name" in msg
    assert "Did you mean 'mmoe'" in msg
    for name in BUILTINS.names("backbone"):
        assert f"{name} (mtlframe)" in msg
    assert "`mtlframe plugins`" in msg


def test_unknown_name_in_a_recipe_points_at_the_key():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(testing.tiny_recipe(**{"model.tower": {"name": "mpl"}}), "r.yaml")
    msg = str(info.value)
    assert "model.tower.name" in msg and "Did you mean 'mlp'" in msg and "mtlframe plugins" in msg


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="kinds are"):
        BUILTINS.get("optimizer", "adam")


# -- two providers of one name ----------------------------------------------------------------------

class TwinA(nn.Module):
    pass


class TwinB(nn.Module):
    pass


def test_a_name_from_two_plugins_is_a_conflict_and_qualified_names_resolve():
    one = _plugin("pkg_one_plugin", "pkg-one", mtlframe_towers=[ComponentSpec("twin", TwinA, "one")])
    two = _plugin("pkg_two_plugin", "pkg-two", mtlframe_towers=[ComponentSpec("twin", TwinB, "two")])
    reg = build_registry(load_entry_points=False, extra_plugins=[one, two], strict=True)
    with pytest.raises(ComponentConflictError) as info:
        reg.get("tower", "twin", where="recipe r.yaml, key model.tower.name")
    msg = str(info.value)
    assert "pkg-one:twin (pkg-one 1.0)" in msg and "pkg-two:twin (pkg-two 1.0)" in msg
    assert "r.yaml" in msg and "qualified name" in msg
    assert reg.get("tower", "pkg-one:twin").load() is TwinA
    assert reg.get("tower", "pkg-two:twin").load() is TwinB
    assert reg.names("tower").count("twin") == 1
    # a plugin cannot silently shadow a built-in either
    shadow = _plugin("shadow_plugin", "pkg-shadow", mtlframe_towers=[ComponentSpec("mlp", TwinA)])
    reg = build_registry(load_entry_points=False, extra_plugins=[shadow], strict=True)
    with pytest.raises(ComponentConflictError, match="mtlframe:mlp"):
        reg.get("tower", "mlp")
    assert reg.get("tower", "mtlframe:mlp").provider.distribution == "mtlframe"


def test_a_hook_returning_something_else_is_a_recorded_failure():
    bad = _plugin("bad_hook_plugin", "pkg-bad", mtlframe_towers=["mlp"])
    with pytest.warns(RuntimeWarning, match="pkg-bad"):
        reg = build_registry(load_entry_points=False, extra_plugins=[bad], strict=False)
    assert [f.distribution for f in reg.failures] == ["pkg-bad"]
    assert "ComponentSpec" in reg.failures[0].error
    with pytest.raises(PluginLoadError, match="pkg-bad"):
        build_registry(load_entry_points=False, extra_plugins=[bad], strict=True)


# -- a broken entry point --------------------------------------------------------------------------

class FakeEntryPoint:
    """Stands in for ``importlib.metadata.EntryPoint`` (name, value, group, dist, load)."""

    def __init__(self, name: str, distribution: str, version: str, load) -> None:
        self.name, self.value, self.group = name, f"{name}_pkg.plugin", "mtlframe"
        self.dist = SimpleNamespace(metadata={"Name": distribution}, version=version)
        self._load = load

    def load(self):
        return self._load()


def _raise_import_error():
    raise ImportError("No module named 'heavy_dependency'")


GOOD = _plugin("good_plugin", "mtlframe-good", mtlframe_towers=[ComponentSpec("good-tower", TwinA, "works")])


@pytest.fixture()
def broken_entry_point(monkeypatch):
    """Entry points: one whose import fails (``mtlframe-broken 0.3.1``) and one that works."""
    eps = [FakeEntryPoint("broken", "mtlframe-broken", "0.3.1", _raise_import_error),
           FakeEntryPoint("good", "mtlframe-good", "2.0", lambda: GOOD)]

    def entry_points(group=None, **kwargs):
        return eps if group == "mtlframe" else []

    monkeypatch.setattr(registry_mod.metadata, "entry_points", entry_points)
    monkeypatch.delenv("MTLFRAME_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("MTLFRAME_DISABLE_PLUGINS", raising=False)
    return eps


def test_broken_plugin_is_recorded_and_warned_about_once_and_the_rest_works(broken_entry_point):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = build_registry()
    ours = [w for w in caught if "mtlframe plugin failed to load" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
    assert "mtlframe-broken 0.3.1" in str(ours[0].message) and "heavy_dependency" in str(ours[0].message)
    assert reg.failures == [LoadFailure("broken", "mtlframe-broken", "0.3.1",
                                        "ImportError: No module named 'heavy_dependency'")]
    assert reg.get("backbone", "mmoe").provider.distribution == "mtlframe"
    good = reg.get("tower", "good-tower")
    assert (good.provider.distribution, good.provider.version) == ("mtlframe-good", "2.0")
    assert "broken" not in reg.plugins and "good" in reg.plugins


def test_strict_plugins_makes_a_load_failure_fatal(broken_entry_point, monkeypatch):
    monkeypatch.setenv("MTLFRAME_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"mtlframe-broken 0\.3\.1.*heavy_dependency"):
        build_registry()


@pytest.mark.parametrize("blocked", ["broken", "mtlframe-broken", "other, broken"])
def test_disabled_plugins_are_skipped(broken_entry_point, monkeypatch, blocked):
    monkeypatch.setenv("MTLFRAME_STRICT_PLUGINS", "1")
    monkeypatch.setenv("MTLFRAME_DISABLE_PLUGINS", blocked)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = build_registry()
    assert reg.failures == []
    assert reg.get("tower", "good-tower").provider.distribution == "mtlframe-good"


def test_a_recipe_naming_a_component_of_the_failed_plugin_gets_the_failure(broken_entry_point, monkeypatch):
    with pytest.warns(RuntimeWarning):
        reg = build_registry()
    with pytest.raises(PluginLoadError) as info:
        reg.get("tower", "mtlframe-broken:fancy-tower")
    msg = str(info.value)
    assert "failed to load" in msg and "mtlframe-broken 0.3.1" in msg and "heavy_dependency" in msg
    assert "pip install -U mtlframe-broken" in msg
    # through recipe validation, with the key, and for the entry-point name as qualifier too
    monkeypatch.setattr(registry_mod, "_REGISTRY", reg)
    recipe = testing.tiny_recipe(**{"model.tower": {"name": "broken:fancy-tower"}})
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(recipe, "r.yaml")
    msg = str(info.value)
    assert "model.tower.name" in msg and "failed to load" in msg and "heavy_dependency" in msg
    # a bare unknown name: the message says which plugins failed and may provide it
    with pytest.raises(UnknownComponentError, match="failed to load and may provide it: mtlframe-broken"):
        reg.get("tower", "fancy-tower")


def _use_entry_points(monkeypatch, eps):
    monkeypatch.setattr(registry_mod.metadata, "entry_points", lambda group=None, **kw: eps if group == "mtlframe" else [])
    monkeypatch.delenv("MTLFRAME_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("MTLFRAME_DISABLE_PLUGINS", raising=False)


def test_two_distributions_with_one_entry_point_name_are_both_loaded(monkeypatch):
    one = _plugin("one_plugin", "pkg-one", mtlframe_towers=[ComponentSpec("tower-one", TwinA, "one"),
                                                            ComponentSpec("twin", TwinA, "one")])
    two = _plugin("two_plugin", "pkg-two", mtlframe_towers=[ComponentSpec("tower-two", TwinB, "two"),
                                                            ComponentSpec("twin", TwinB, "two")])
    _use_entry_points(monkeypatch, [FakeEntryPoint("extra", "pkg-one", "1.0", lambda: one),
                                    FakeEntryPoint("extra", "pkg-two", "2.0", lambda: two)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # nothing fails, nothing is skipped
        reg = build_registry()
    assert reg.failures == []
    assert {k: (p.distribution, p.version) for k, p in reg.plugins.items() if k != "mtlframe"} == {
        "pkg-one:extra": ("pkg-one", "1.0"), "pkg-two:extra": ("pkg-two", "2.0")}
    assert reg.get("tower", "tower-one").load() is TwinA and reg.get("tower", "tower-two").load() is TwinB
    # a component both register: an error naming both distributions; qualified names pick one
    with pytest.raises(ComponentConflictError) as info:
        reg.get("tower", "twin", where="recipe r.yaml, key model.tower.name")
    assert "pkg-one:twin (pkg-one 1.0)" in str(info.value) and "pkg-two:twin (pkg-two 2.0)" in str(info.value)
    assert reg.get("tower", "pkg-two:twin").load() is TwinB
    # disabling by distribution leaves the other one
    monkeypatch.setenv("MTLFRAME_DISABLE_PLUGINS", "pkg-one")
    assert build_registry().get("tower", "twin").load() is TwinB


BROKEN_PLUGIN = textwrap.dedent("""
    import {where}
    from mtlframe import ComponentSpec, hookimpl

    @hookimpl
    def mtlframe_towers():
        return [ComponentSpec("fancy-tower", "broken_src_pkg.towers:Fancy", "a tower"),
                ComponentSpec(name="plain-tower", factory="broken_src_pkg.towers:Plain")]

    @hookimpl
    def mtlframe_combiners():
        return [ComponentSpec("fancy-combiner", "broken_src_pkg.combiners:Fancy")]
""")


@pytest.mark.parametrize("fails_in", ["plugin", "package"])
def test_a_bare_name_of_a_failed_plugins_component_says_which_plugin_and_why(tmp_path, monkeypatch, fails_in):
    import importlib

    name = f"broken_{fails_in}"          # one package per case: the import system caches packages
    pkg = tmp_path / f"{name}_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import missing_dep_of_init\n" if fails_in == "package" else "")
    (pkg / "plugin.py").write_text(BROKEN_PLUGIN.replace("{where}", "missing_dep_of_plugin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = FakeEntryPoint(name, "mtlframe-fancy", "0.2", lambda: importlib.import_module(f"{name}_pkg.plugin"))
    _use_entry_points(monkeypatch, [ep])
    with pytest.warns(RuntimeWarning, match="mtlframe-fancy"):
        reg = build_registry()
    missing = "missing_dep_of_init" if fails_in == "package" else "missing_dep_of_plugin"
    assert reg.failures[0].components == ("tower:fancy-tower", "tower:plain-tower", "combiner:fancy-combiner")
    assert str(reg.failures[0]).endswith("(it provides tower:fancy-tower, tower:plain-tower, combiner:fancy-combiner)")
    with pytest.raises(PluginLoadError) as info:
        reg.get("tower", "plain-tower")
    msg = str(info.value)
    assert f"comes from plugin '{name}' (mtlframe-fancy 0.2), which failed to load" in msg
    assert f"ModuleNotFoundError: No module named '{missing}'" in msg and "pip install -U mtlframe-fancy" in msg
    # through recipe validation: the key, the plugin and the reason
    monkeypatch.setattr(registry_mod, "_REGISTRY", reg)
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(testing.tiny_recipe(**{"model.tower": {"name": "fancy-tower"}}), "r.yaml")
    msg = str(info.value)
    assert "model.tower.name" in msg and "mtlframe-fancy 0.2" in msg and missing in msg
    # a name it does not declare (or of another kind) stays unknown, with the failure as a hint
    with pytest.raises(UnknownComponentError, match="failed to load and may provide it: mtlframe-fancy"):
        reg.get("tower", "fancy-combiner")


def test_plugins_command_reports_load_failures(broken_entry_point, monkeypatch, capsys):
    from mtlframe.cli import main

    with pytest.warns(RuntimeWarning):
        reg = build_registry()
    monkeypatch.setattr(registry_mod, "_REGISTRY", reg)
    assert main(["plugins", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["failures"] == [{"entry_point": "broken", "distribution": "mtlframe-broken", "version": "0.3.1",
                                    "error": "ImportError: No module named 'heavy_dependency'", "components": []}]
    assert payload["plugins"]["good"] == {"distribution": "mtlframe-good", "version": "2.0"}
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "failed to load" in out and "mtlframe-broken" in out


# -- the contract check, generated from the registry (every built-in of every kind) -----------------

#: recipe arguments a component needs for its check (everything else runs with its defaults)
CONTRACT_ARGS = {
    ("dataset", "synthetic"): {"num_rows": 300, "num_features": 6, "num_categorical": 1},
    ("encoder", "bag-of-words"): {"num_buckets": 1024, "dim": 8},
    ("encoder", "embedding"): {"dim": 4},
    ("encoder", "numeric"): {"dim": 4},
    # check_sampler's data
    ("sampler", "uniform-negatives"): {"task": "click", "item_features": ["item"], "user_feature": "user"},
    ("sampler", "popularity-negatives"): {"task": "click", "item_features": ["item"], "user_feature": "user"},
    ("sampler", "in-batch"): {"item_feature": "item"},
    ("sampler", "mixed"): {"item_feature": "item", "num_negatives": 4},
    # funnels name their stages (check_backbone's tasks are a, b)
    **{("backbone", n): {"click": "a", "conversion": "b"} for n in ("esmm", "escm2", "aitm")},
}


def _contract_args(kind: str, name: str, tmp_path: Path) -> dict:
    if (kind, name) in {("dataset", "csv"), ("dataset", "parquet")}:
        import pandas as pd
        frame = pd.DataFrame({"user": ["u1", "u2", "u1"], "price": [1.5, None, 3.0], "click": [1, 0, 1]})
        path = tmp_path / f"table.{name}"
        frame.to_csv(path, index=False) if name == "csv" else frame.to_parquet(path)
        return {"path": str(path), "features": {"user": "categorical", "price": "numeric"}, "labels": ["click"]}
    if (kind, name) == ("dataset", "movielens-100k"):
        path = REPO.parent / "shared" / "data" / "ml-100k"
        if not (path / "u.data").exists():
            pytest.skip(f"MovieLens 100K not found at {path}")
        return {"path": str(path), "download": False}
    return dict(CONTRACT_ARGS.get((kind, name), {}))


CASES = [(kind, c.name) for kind in KINDS for c in BUILTINS.all(kind)]


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_every_builtin_component_passes_its_contract_check(kind, name, tmp_path):
    factory = BUILTINS.get(kind, name).load()
    testing.check(kind, factory, **_contract_args(kind, name, tmp_path))


def test_every_kind_has_a_contract_check():
    for kind in KINDS:
        assert kind == "metric" or kind in testing._CHECKS


# -- the checks catch broken components -------------------------------------------------------------

class KwargsBackbone(Backbone):
    def __init__(self, *, input_dim: int, task_names: list[str], **extra: int) -> None:
        super().__init__()
        self.lin = nn.Linear(input_dim, 4)
        self.output_dims = {t: 4 for t in task_names}

    def forward(self, x):
        return {t: self.lin(x) for t in self.output_dims}


class VanishingAuxBackbone(Backbone):
    """An auxiliary loss over labelled rows that disappears when the batch has none (under DDP the
    processes would reduce vectors of different sizes)."""

    def __init__(self, *, input_dim: int, task_names: list[str]) -> None:
        super().__init__()
        self.lin = nn.Linear(input_dim, 4)
        self.output_dims = {t: 4 for t in task_names}

    def forward(self, x):
        return {t: self.lin(x) for t in self.output_dims}

    def auxiliary_loss_sums(self, batch, outputs):
        mask = batch[mask_key("b")]
        if not bool(mask.any()):
            return {}
        return {"vanish/l": AuxLoss(torch.where(mask, outputs["b"], 0.0).square().sum(), mask.sum())}


class BatchMixingEncoder(Encoder):
    """Subtracts the batch mean: a row's encoding depends on the other rows."""

    accepts = frozenset({"numeric"})

    def __init__(self, features: list[str], *, feature_info: dict) -> None:
        super().__init__()
        self.input_keys = list(features)
        self.scale = nn.Parameter(torch.ones(len(features)))
        self.output_dim = len(features)

    def forward(self, batch):
        x = torch.stack([batch[k] for k in self.input_keys], 1)
        return (x - x.mean(0)) * self.scale


class UnusedParameterTower(Tower):
    def __init__(self, *, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(input_dim, output_dim)
        self.unused = nn.Linear(input_dim, output_dim)

    def forward(self, h):
        return self.out(h)


class UntypedTower(Tower):
    def __init__(self, hidden=8, *, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(input_dim, output_dim)

    def forward(self, h):
        return self.out(h)


class NoKeysEncoder(Encoder):
    """Reads its feature from the batch without declaring it in input_keys."""

    accepts = frozenset({"numeric"})

    def __init__(self, features: list[str], *, feature_info: dict) -> None:
        super().__init__()
        self.features = list(features)
        self.output_dim = 1

    def forward(self, batch):
        return batch[self.features[0]].unsqueeze(1)


@pytest.mark.parametrize("check,factory,match", [
    (testing.check_backbone, KwargsBackbone, r"catch-all parameter \(\*extra\)"),
    (testing.check_encoder, BatchMixingEncoder, "depend only on that row"),
    (testing.check_tower, UnusedParameterTower, "no gradient.*unused"),
    (testing.check_tower, UntypedTower, "without a type annotation: hidden"),
    (testing.check_encoder, NoKeysEncoder, "input_keys"),
    (testing.check_backbone, VanishingAuxBackbone, r"same names .* without a labelled row .*\[\] instead of "
                                                   r"\[\('vanish/l', 1\)\]"),
], ids=["kwargs", "batch-mixing", "unused-parameter", "untyped", "undeclared-key", "vanishing-aux"])
def test_contract_checks_catch_broken_components(check, factory, match):
    with pytest.raises(testing.ContractError, match=match):
        check(factory)


def test_tiny_recipe_and_datamodule():
    recipe = testing.tiny_recipe(trainer__max_epochs=2, **{"model.encoders[1].dim": 3})
    assert recipe["trainer"]["max_epochs"] == 2 and recipe["model"]["encoders"][1]["dim"] == 3
    assert testing.tiny_recipe()["trainer"]["max_epochs"] == 1        # overrides never leak
    dm = testing.tiny_datamodule()
    info = dm.feature_info()
    assert info["cat_0"].cardinality == 21 and info["x_000"].type == "numeric"
    assert sum(len(v) for v in dm.split_index.values()) == 2000
    assert [t.name for t in dm.task_specs()] == ["task_0", "task_1_bin"]


# -- documentation ---------------------------------------------------------------------------------

HOOKSPECS = [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "mtlframe_spec")]


def test_every_kind_has_a_hookspec():
    assert {n for n, _ in HOOKSPECS} >= set(KINDS.values())


@pytest.mark.parametrize("name,spec", HOOKSPECS, ids=[n for n, _ in HOOKSPECS])
def test_every_hook_is_documented_with_a_working_example(name, spec):
    doc = inspect.getdoc(spec) or ""
    assert len(doc.splitlines()[0]) > 20, f"{name}: first docstring line should say what it registers"
    assert "Example::" in doc, f"{name}: docstring needs an 'Example::' block"
    block = doc.split("Example::", 1)[1]
    code = textwrap.dedent("\n".join(line for line in block.splitlines()[1:]
                                     if not line.strip() or line.startswith((" ", "\t"))))
    assert "@hookimpl" in code and f"def {name}" in code
    # the example is real code: run it and register what it defines as a plugin
    namespace = {"hookimpl": hookimpl, "ComponentSpec": ComponentSpec}
    exec(compile(code, f"<{name} example>", "exec"), namespace)  # noqa: S102 - our own docstring
    plugin = types.ModuleType(f"example_{name}")
    setattr(plugin, name, namespace[name])
    reg = build_registry(load_entry_points=False, extra_plugins=[plugin], strict=True)
    kind = {v: k for k, v in KINDS.items()}.get(name)
    if kind:
        assert any(c.provider.plugin == f"example_{name}" for c in reg.all(kind))


def _doc_sections() -> dict[str, dict[str, str]]:
    text = (REPO / "docs" / "components.md").read_text(encoding="utf-8")
    out: dict[str, dict[str, str]] = {}
    for kind_block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        kind = kind_block.split("\n", 1)[0].strip().rstrip("s")
        out[kind] = {}
        for comp_block in re.split(r"^### ", kind_block, flags=re.MULTILINE)[1:]:
            m = re.match(r"`([^`]+)`", comp_block)
            if m:
                out[kind][m.group(1)] = comp_block
    return out


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_every_component_is_in_docs_components_md(kind, name):
    sections = _doc_sections()
    hint = "regenerate it: python docs/gen_components.py"
    assert name in sections.get(kind, {}), f"{kind} '{name}' is missing from docs/components.md; {hint}"
    section = sections[kind][name]
    assert "Paper / source:" in section or kind == "metric"
    factory = BUILTINS.get(kind, name).load()
    if kind != "metric":
        for param in testing.check_signature(factory):
            assert f"| `{param}` |" in section, f"{kind} '{name}': parameter '{param}' is not documented; {hint}"

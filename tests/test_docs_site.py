"""The documentation site builds with ``mkdocs build --strict`` (no broken link, anchor or page left
out of the nav), works offline, and its generated reference pages are up to date."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("material", reason="mkdocs-material is in the docs and test extras")
    out = tmp_path_factory.mktemp("site")   # built from another folder: paths resolve from mkdocs.yml
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(out)], cwd=out.parent, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [proc.stderr[-3000:]])
    return out


def test_strict_build_publishes_every_nav_page_and_no_generator_script(site):
    for page in ("index.html", "concepts/index.html", "quickstart/index.html", "compare/index.html",
                 "plugins/index.html", "recipe-reference/index.html", "components/index.html",
                 "failure-semantics/index.html", "benchmarks/index.html", "performance/index.html"):
        assert (site / page).is_file(), page
    assert (site / "img" / "data-path.svg").is_file()
    # generated at build time from recipes/: every shipped recipe, as it is
    shipped = re.sub(r"<[^>]+>", "", (site / "shipped-recipes" / "index.html").read_text(encoding="utf-8"))
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert f"recipes/{recipe.name}" in shipped, recipe.name
    assert "fill_missing: {age: mean}" in shipped
    assert not list(site.rglob("*.py")), "generator scripts and hooks must not be published"


def test_built_site_loads_nothing_from_the_network(site):
    """Fonts, scripts and stylesheets come from the site itself, so it works offline."""
    remote = []
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        remote += [f"{page.relative_to(site)}: {m}" for m in
                   re.findall(r"<(?:script|link|img)\b[^>]*?(?:src|href)=\"(?:https?:)?//[^\"]+\"", html)]
    assert not remote, "resources loaded from the network:\n" + "\n".join(remote[:10])


def test_site_renders_pipes_in_table_code_and_the_plugin_tutorial(site):
    comps = (site / "components" / "index.html").read_text(encoding="utf-8")
    assert "<code>str | None</code>" in comps and "&amp;#124;" not in comps and "\\|" not in comps
    plugins = re.sub(r"<[^>]+>", "", (site / "plugins" / "index.html").read_text(encoding="utf-8"))
    # the tutorial is the template's README, included at build time, with its real commands
    assert "cp -r plugins/mtlframe-example ~/src/mtlframe-hashed" in plugins
    assert "--8&lt;--" not in plugins and "--8<--" not in plugins
    quickstart = re.sub(r"<[^>]+>", "", (site / "quickstart" / "index.html").read_text(encoding="utf-8"))
    assert "fill_missing: {age: mean}" in quickstart          # recipes/quickstart.yaml, included


def test_table_pipe_hook_unescapes_only_code_spans_of_table_rows():
    hooks = _load("mkdocs_hooks")
    text = "| `str \\| None` | a \\| b |\n`x \\| y`\n```\n| `p \\| q` |\n```"
    assert hooks.unescape_table_pipes(text) == "| `str | None` | a \\| b |\n`x \\| y`\n```\n| `p \\| q` |\n```"


@pytest.mark.parametrize("name", ["gen_recipe_reference", "gen_components"])
def test_generated_reference_is_up_to_date(name, capsys):
    assert _load(name).main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_a_stale_page_with_the_command(tmp_path, monkeypatch, capsys):
    gen = _load("gen_recipe_reference")
    stale = tmp_path / "recipe-reference.md"
    stale.write_text("# Recipe keys\n(old)\n", encoding="utf-8")
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    assert f"{stale} is out of date; run: python docs/gen_recipe_reference.py" in capsys.readouterr().err
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0          # rewritten: up to date


def test_recipe_reference_rows_give_type_default_and_description():
    text = (REPO / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert "| `data.batch_size` | `int`, ≥ 1 | `1024` | training batch size (rows) |" in text
    assert "| `tasks.<task>.type` | one of `binary`, `regression`, `multiclass`, `retrieval` | required |" in text
    assert ("| `model.encoders` | list of [encoder component](components.md#encoders), non-empty | required |"
            in text)
    assert "| `model.tower` | [tower component](components.md#towers) | `{name: mlp}` |" in text
    assert "| `data.split` | [section](#datasplit) | the section's defaults | How rows are split. |" in text


class _Inner(BaseModel):
    """Inner options. More text."""

    #: how deep
    depth: int = Field(2, ge=1)


class _Toy(BaseModel):
    """A toy section. ``mode``: how it runs."""

    #: a described key
    size: int = 3
    mode: Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    parts: dict[str, _Inner] = {}
    undocumented: float | None = None
    also_undocumented: str


def test_recipe_reference_generator_reads_comments_docstrings_and_lists_undescribed_keys():
    gen = _load("gen_recipe_reference")
    with pytest.raises(gen.MissingDescriptions) as err:
        gen.render(_Toy)
    assert err.value.args[0] == ["undocumented", "also_undocumented"]

    class Documented(_Toy):
        #: now described
        undocumented: float | None = None
        also_undocumented: str = Field(description="from Field")

    text = gen.render(Documented)
    assert "| `size` | `int` | `3` | a described key |" in text
    assert "| `mode` | one of `a`, `b` | `a` | how it runs. |" in text
    assert "| `inner` | [section](#inner) | the section's defaults | Inner options. |" in text
    assert "| `inner.depth` | `int`, ≥ 1 | `2` | how deep |" in text
    assert "| `parts.<name>.depth` | `int`, ≥ 1 | `2` | how deep |" not in text  # one section per model
    assert "| `undocumented` | `float` or `null` | `null` | now described |" in text
    assert "| `also_undocumented` | `str` | required | from Field |" in text


def test_component_reference_covers_a_kind_without_a_hand_written_intro(monkeypatch):
    gen = _load("gen_components")
    monkeypatch.delitem(gen.KIND_INTRO, "tower")
    text = gen.render()
    assert "## towers\n\nRegister task towers (subclasses of `Tower`).\n" in text

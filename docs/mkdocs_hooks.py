"""mkdocs hooks (``hooks:`` in ``mkdocs.yml``); not a page.

Pipes in table cells: GitHub's Markdown needs a ``|`` inside a table cell written ``\\|``, even inside a
code span (```str \\| None```), and shows it as ``|``; Python-Markdown keeps the backslash inside code
spans (and already ignores a bare ``|`` there). So that the pages read right in both places, the docs
write ``\\|``, and this hook drops the backslash inside code spans of table rows before the site is built.

Snippets (``--8<-- "recipes/quickstart.yaml"``) are read relative to the repository root (the folder of
``mkdocs.yml``), wherever ``mkdocs`` is run from.

The page ``shipped-recipes.md`` is generated at build time from ``recipes/*.yaml`` (each recipe's leading
comment and the file itself), so the site shows the recipes the other pages name by path, and a recipe
added to the folder appears without editing anything.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def unescape_table_pipes(markdown: str) -> str:
    """``\\|`` -> ``|`` inside the code spans of table rows (lines starting with ``|``), outside fences."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|") and "\\|" in line:
            line = _CODE_SPAN.sub(lambda m: m.group(1) + m.group(2).replace("\\|", "|") + m.group(1), line)
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return unescape_table_pipes(markdown)


def on_config(config, **kwargs):
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    config.mdx_configs.setdefault("pymdownx.snippets", {})["base_path"] = [root]
    return config


def shipped_recipes_page(root: Path) -> str:
    """Markdown of the shipped-recipes page: a section per ``recipes/*.yaml`` with the whole file (its
    leading comment says what it is and how to run it)."""
    out = ["# Shipped recipes", "",
           "The recipes in the `recipes/` folder of the repository, as they are (this page is generated from the "
           "folder when the site is built). Run one with `mtlframe train recipes/<name>.yaml`; override any key "
           "on the command line. Keys: [Recipe keys](recipe-reference.md); components: "
           "[components.md](components.md).", ""]
    for path in sorted((root / "recipes").glob("*.yaml")):
        out += [f"## `{path.stem}`", "", f"`recipes/{path.name}`", "", "```yaml",
                path.read_text(encoding="utf-8").rstrip("\n"), "```", ""]
    return "\n".join(out)


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).resolve().parent
    files.append(File.generated(config, "shipped-recipes.md", content=shipped_recipes_page(root)))
    return files

"""mkdocs hooks (``hooks:`` in ``mkdocs.yml``); not a page.

Pipes in table cells: GitHub's Markdown needs a ``|`` inside a table cell written ``\\|``, even inside a
code span (```str \\| None```), and shows it as ``|``; Python-Markdown keeps the backslash inside code
spans (and already ignores a bare ``|`` there). So that the pages read right in both places, the docs
write ``\\|``, and this hook drops the backslash inside code spans of table rows before the site is built.

Snippets (``--8<-- "recipes/quickstart.yaml"``) are read relative to the repository root (the folder of
``mkdocs.yml``), wherever ``mkdocs`` is run from.
"""
from __future__ import annotations

import os
import re

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

"""Write ``docs/recipe-reference.md`` from the recipe schema: every key, its type, default and meaning.

    python docs/gen_recipe_reference.py            # rewrite docs/recipe-reference.md
    python docs/gen_recipe_reference.py --check    # exit 1 if the committed file is out of date

The schema is the pydantic models of ``mtlframe/recipe.py``, walked from ``RecipeConfig``: a field
whose type is another model is a section of its own (``data.split``), a ``dict[str, Model]`` a
section keyed by a placeholder (``tasks.<task>``), and a component entry (``{name: ..., ...}``)
links to its kind in ``docs/components.md``. A key's description is, in order: its
``Field(description=...)``, the ``#:`` comment lines right above it in the source, or a
```` ``key``: ... ```` sentence of its class docstring. A section without one takes the first sentence of its model's docstring.
A key without any description is an error (exit 2)
naming it, so that every key is documented.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "recipe-reference.md"

#: the placeholder of a ``dict[str, Model]`` section's keys, by field name (default ``<name>``)
PLACEHOLDERS = {"tasks": "<task>", "towers": "<task>"}


class MissingDescriptions(Exception):
    """Keys of the schema with no description anywhere."""


def _rst_to_md(text: str) -> str:
    text = re.sub(r":\w+:`~?([\w.]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=None)
def _comment_docs(cls: type) -> dict[str, str]:
    """``field -> text`` of the ``#:`` comment lines directly above each field of ``cls``."""
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"    (\w+)\s*:", line)
        if m and pending:
            out[m.group(1)] = " ".join(pending)
        pending = []
    return out


@functools.lru_cache(maxsize=None)
def _docstring_docs(cls: type) -> dict[str, str]:
    """``field -> text`` of the ````field``: ...`` (or ````a`` / ``b``: ...``) runs of a class docstring;
    a run ends at the next such marker or at the end of its paragraph."""
    out: dict[str, str] = {}
    marker = re.compile(r"``(\w+)``((?:\s*/\s*``\w+``)*):\s")
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(cls.__doc__ or "")):
        hits = list(marker.finditer(paragraph))
        for hit, nxt in zip(hits, hits[1:] + [None]):
            body = paragraph[hit.end():nxt.start() if nxt else len(paragraph)]
            names = [hit.group(1), *re.findall(r"``(\w+)``", hit.group(2))]
            for name in names:
                out.setdefault(name, _rst_to_md(body))
    return out


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[a-z)`]\.)\s+(?=[A-Z`])", text, maxsplit=1)[0]


def _flow(value: Any) -> str:
    """A value as YAML flow style (``{name: mlp}``, ``[10, 20]``, ``null``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return value if value and re.fullmatch(r"[\w.+@/-]+", value) else json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def _is_component(tp: Any) -> bool:
    return typing.get_origin(tp) is dict and typing.get_args(tp) == (str, Any)


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _models_in(arg)]


def _heading(path: str) -> str:
    """A section's heading: its path with placeholders as ``*`` (``tasks.*``), since ``<task>`` in a
    heading gives different anchors on GitHub and on the site."""
    return re.sub(r"<\w+>", "*", path)


def _anchor(path: str) -> str:
    """The heading anchor of a section ``## `path` `` (GitHub's rule, as mkdocs.yml configures)."""
    return re.sub(r"[^\w\- ]", "", _heading(path).lower()).replace(" ", "-")


def _kind_link(field: str, kinds: list[str]) -> str:
    """``component`` linked to its kind in components.md when the key names one (``model.encoders``
    -> encoders); the registry's kinds, so a new kind needs no change here."""
    singular = field[:-1] if field.endswith("s") else field
    kind = field if field in kinds else singular if singular in kinds else None
    return f"[{kind} component](components.md#{kind}s)" if kind else "component"


def _type(tp: Any, field: str, kinds: list[str], sections: dict[type, str]) -> str:
    """Markdown for a type: ``int``, ``one of `a`, `b` ``, ``list of [encoder component](...)``."""
    if tp is type(None):
        return "`null`"
    if _is_component(tp):
        return _kind_link(field, kinds)
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        path = sections.get(tp)
        return f"[section](#{_anchor(path)})" if path else "section"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a, field, kinds, sections) for a in args]
        return " or ".join(dict.fromkeys(parts))
    if origin is list:
        return f"list of {_type(args[0], field, kinds, sections)}"
    if origin is tuple:
        return "[" + ", ".join(_type(a, field, kinds, sections) for a in args) + "]"
    if origin is dict:
        return f"mapping of {_type(args[0], field, kinds, sections)} to {_type(args[1], field, kinds, sections)}"
    if tp is Any:
        return "any"
    return f"`{getattr(tp, '__name__', str(tp))}`"


_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"),
           (annotated_types.Lt, "lt", "<"))


def _bounds(metadata: list[Any]) -> str:
    out = []
    for item in metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(item, cls):
                out.append(f"{sign} {_flow(getattr(item, attr))}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append("non-empty" if item.min_length == 1 else f"at least {item.min_length} items")
    return ", ".join(out)


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return f"`{_flow(info.default_factory())}`"
    if info.default is PydanticUndefined:
        return "required"
    if isinstance(info.default, BaseModel):
        return "the section's defaults"
    return f"`{_flow(info.default)}`"


def _description(model: type[BaseModel], name: str, info: Any) -> str:
    if info.description:
        return _rst_to_md(info.description)
    for cls in model.__mro__:
        if not (inspect.isclass(cls) and issubclass(cls, BaseModel)) or name not in getattr(cls, "__annotations__", {}):
            continue
        text = _comment_docs(cls).get(name) or _docstring_docs(cls).get(name)
        if text:
            return _rst_to_md(text)
    return ""


def _sections(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """``(dotted path, model)`` of every section, depth first, in field order."""
    out: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel]) -> None:
        out.append((path, model))
        for name, info in model.model_fields.items():
            tp = info.annotation
            key = f"{path}.{name}" if path else name
            if typing.get_origin(tp) is dict and _models_in(typing.get_args(tp)[1]):
                key += "." + PLACEHOLDERS.get(name, "<name>")
                tp = typing.get_args(tp)[1]
            for sub in _models_in(tp):
                if all(sub is not m for _, m in out):
                    walk(key, sub)

    walk("", root)
    return out


def render(root: type[BaseModel] | None = None) -> str:
    """The page for ``root`` (default ``mtlframe.recipe.RecipeConfig``); raises
    :class:`MissingDescriptions` listing every key without a description."""
    from mtlframe.registry import KINDS

    if root is None:
        from mtlframe.recipe import RecipeConfig as root

    kinds = list(KINDS)
    sections = _sections(root)
    where = {model: path for path, model in sections}
    missing: list[str] = []
    out = ["# Recipe keys", "",
           "Every key of a recipe, with its type, default and meaning. The guide to recipes (validation, "
           "overrides, missing values, your own data) is [recipes.md](recipes.md); the parameters of each "
           "component entry (`{name: <component>, ...}`) are in [components.md](components.md).", "",
           "Generated by `python docs/gen_recipe_reference.py` from the pydantic models in `mtlframe/recipe.py` "
           "(`RecipeConfig` and the models it holds); do not edit by hand.", "",
           "Sections: " + ", ".join(f"[`{_heading(p)}`](#{_anchor(p)})" for p, _ in sections if p) + ".", ""]
    for path, model in sections:
        title = f"`{_heading(path)}`" if path else "Top level"
        out += [f"## {title}", ""]
        intro = _rst_to_md(inspect.cleandoc(model.__doc__ or "")) if model.__doc__ and model is not BaseModel else ""
        if intro and not intro.startswith("Usage docs:"):
            out += [intro, ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            tp = info.annotation
            type_md = _type(tp, name, kinds, where)
            if typing.get_origin(tp) is dict and _models_in(typing.get_args(tp)[1]):
                sub = where[_models_in(typing.get_args(tp)[1])[0]]
                type_md = f"mapping of name to [section](#{_anchor(sub)})"
            bounds = _bounds(info.metadata)
            if bounds:
                type_md += f", {bounds}"
            text = _description(model, name, info)
            if not text and _models_in(tp if typing.get_origin(tp) is not dict else typing.get_args(tp)[1]):
                sub_model = _models_in(tp if typing.get_origin(tp) is not dict else typing.get_args(tp)[1])[0]
                text = _first_sentence(_rst_to_md(inspect.cleandoc(sub_model.__doc__ or "")))
            if not text:
                missing.append(key)
            cells = [f"`{key}`", type_md, _default(info), text]
            # a `|` in a cell is written `\|` (GitHub's table rule; docs/mkdocs_hooks.py for the site)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    if missing:
        raise MissingDescriptions(missing)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help=f"exit 1 if {OUT.name} is out of date")
    args = ap.parse_args(argv)
    try:
        text = render()
    except MissingDescriptions as exc:
        print("recipe keys without a description (add a `#:` comment above the field in mtlframe/recipe.py, "
              "or Field(description=...)):\n  " + "\n  ".join(exc.args[0]), file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gen_components import write_or_check

    return write_or_check(OUT, text, args.check, "python docs/gen_recipe_reference.py")


if __name__ == "__main__":
    sys.exit(main())

"""Errors raised by mtlframe.

Every error a user can cause is an :class:`MTLFrameError`. The command line prints its message
(one paragraph, no traceback) and exits with status 2. Messages name the file, recipe key,
column or row at fault and say what to do.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path


class MTLFrameError(Exception):
    """Base class of every user-facing mtlframe error."""


class RecipeError(MTLFrameError):
    """A recipe is invalid. Holds every problem found, each with its dotted path.

    Args:
        problems: one ``(dotted_path, message)`` pair per problem.
        source: the recipe file, or ``None`` for an in-memory recipe.
        lines: optional ``dotted_path -> line number`` map used to point into the file (a string
            instead of a number, e.g. ``"command-line override"``, is shown as it is).
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None,
                 lines: dict[str, int | str] | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        self.lines = dict(lines or {})
        super().__init__(self._format())

    def _line_of(self, path: str) -> int | str | None:
        key = path
        while True:  # the key itself, then each parent: a.b[1].c -> a.b[1] -> a.b -> a -> "" (the file)
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            m = re.match(r"^(.*?)(\[[^\]]*\]|\.[^.\[]*)$", key)
            key = m.group(1) if m else ""

    def _format(self) -> str:
        where = self.source or "<recipe>"
        n = len(self.problems)
        if n == 1 and not self.problems[0][0]:  # the file itself (missing, a folder, binary, not YAML): one line
            line = self._line_of("")
            loc = f"{where}:{line}" if isinstance(line, int) else where
            return f"recipe {loc}: {self.problems[0][1]}"
        plural = f"{n} problem{'s' if n != 1 else ''}"
        if where.startswith("command-line"):
            head = f"the {where} have {plural}:"
        elif where.startswith("--"):
            head = f"the {where} values have {plural}:"
        else:
            head = f"recipe {where} has {plural}:"
        rows = []
        for path, msg in self.problems:
            line = self._line_of(path)
            loc = line if isinstance(line, str) else f"{where}:{line}" if line else where
            rows.append(f"  - {path or '<top>'} ({loc}): {msg}")
        tail = "Fix the recipe and run `mtlframe recipe validate RECIPE` to check it."
        return "\n".join([head, *rows, tail])


class ArgumentError(ValueError):
    """A component's constructor rejects the value of one of its parameters.

    Raise it (instead of a plain ``ValueError``) from a component's constructor or its
    ``validate_args`` classmethod to name the parameter: mtlframe reports the problem at that
    recipe key (``model.encoders[2].layer``), at ``recipe validate`` and at ``train``.

    Args:
        param: the constructor parameter at fault (``"layer"``), or a dotted path below it
            (``"funnel[1]"``).
        message: what is wrong and what to write instead; name the value given.

    Example::

        if not 0.0 <= dropout < 1.0:
            raise ArgumentError("dropout", f"dropout must be in [0, 1), got {dropout}")
    """

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        super().__init__(message)


class UnknownComponentError(MTLFrameError):
    """A recipe names a component that no installed plugin provides."""


class ComponentConflictError(MTLFrameError):
    """Two plugins register the same bare name for one component kind."""


class PluginLoadError(MTLFrameError):
    """A plugin failed to import (raised when its component is needed, or in strict mode)."""


class DataError(MTLFrameError):
    """Input data is missing, malformed, or does not match the recipe."""


class CheckpointError(MTLFrameError):
    """A checkpoint cannot be used (not written by mtlframe, or missing state)."""


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened as a file, as words that follow its name: ``"does not exist"``
    or ``"is a folder, not a file"`` (``None`` when it is a file). For errors about a path the
    user gave where a file is expected (a recipe, ``--checkpoint``, ``--input``, a dataset path)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return "is a folder, not a file"
    if not p.exists():
        return "does not exist"
    return None


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be (created as) a folder, as words that follow its name: ``"is a file"``
    or ``"is inside X, which is a file"`` (``None`` when it is a folder or can be created). For
    output folders the user gives (``--output``)."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if q.is_dir():
                return None
            return "is a file" if q == p else f"is inside {q}, which is a file"
    return None


def read_text_file(path: str | Path) -> tuple[str, str | None]:
    """``(text, None)`` for a UTF-8 text file, else ``("", problem)`` with the problem as words that
    follow the path's name: missing, a folder, binary (a checkpoint?) or not UTF-8 (where)."""
    p = Path(path)
    problem = file_problem(p)
    if problem:
        return "", problem
    data = p.read_bytes()
    if b"\x00" in data[:8192]:
        return "", "is a binary file, not text (a checkpoint or an archive?)"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return "", (f"is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} cannot be decoded "
                    "(a binary file, or text saved in another encoding: save it as UTF-8)")


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` closest to ``name`` (difflib ratio >= 0.5)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)


def near_hint(near: list[str], otherwise: str = "") -> str:
    """``"; did you mean 'x'?"`` for the first of ``near`` (from :func:`closest`), else ``otherwise``."""
    return f"; did you mean '{near[0]}'?" if near else otherwise


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` or an empty string."""
    match = closest(name, choices, n=1)
    return f" Did you mean '{match[0]}'?" if match else ""

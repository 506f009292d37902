"""The docs tell the truth about the code: every module, file, link, command, logged key and
package they name exists, and every component parameter has a description."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "plugins").glob("*/README.md")])


def _cli_commands() -> tuple[str, ...]:
    """Every subcommand of ``mtlframe``, read from the CLI's own parser, so that the examples of a new
    command are checked as soon as it exists."""
    import argparse

    from mtlframe.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(sub.choices)


COMMANDS = _cli_commands()
PACKAGE_DIRS = ("mtlframe/", "recipes/", "docs/", "benchmarks/", "plugins/", "tests/")


def _toml(text: str) -> dict:
    try:
        import tomllib                       # Python >= 3.11
    except ModuleNotFoundError:              # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(text)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return [" ".join(s.split()) for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens (the site uses the
    same rule, mkdocs.yml). Emphasis markers go; an underscore inside a word (`early_stopping`) stays."""
    heading = re.sub(r"[`*]|(?<!\w)_+|_+(?!\w)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _text(path), flags=re.MULTILINE | re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE)}


# -- links ------------------------------------------------------------------------------------------

def _links() -> list[tuple[Path, str]]:
    out = []
    for doc in DOCS:
        prose = re.sub(r"^```.*?^```", "", _text(doc), flags=re.MULTILINE | re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if not re.match(r"[a-z]+://|mailto:", target):
                out.append((doc, target))
    return out


@pytest.mark.parametrize("doc,target", _links(), ids=[f"{_rel(d)}->{t}" for d, t in _links()])
def test_every_relative_link_points_at_an_existing_page_and_heading(doc, target):
    page, _, anchor = target.partition("#")
    dest = (doc.parent / page).resolve() if page else doc
    assert dest.exists(), f"{_rel(doc)} links to {target}, which does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{_rel(doc)} links to {target}: no heading with that anchor"


def test_no_doc_names_a_missing_page_or_repository_file():
    """Paths written in the docs (``docs/recipes.md``, ``mtlframe/hookspecs.py``, ``recipes/x.yaml``)."""
    missing = []
    pattern = re.compile(r"(?<![\w./<-])((?:\.\./)*(?:%s)[\w./-]*[\w/])" % "|".join(re.escape(d) for d in PACKAGE_DIRS))
    for doc in DOCS:
        for path in set(pattern.findall(_text(doc))):
            if "*" in path or "<" in path:
                continue
            candidates = [REPO / path.lstrip("./"), (doc.parent / path)]
            if not any(c.exists() for c in candidates):
                missing.append(f"{_rel(doc)}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(sorted(missing))


# -- modules ----------------------------------------------------------------------------------------

_MODULE_REF = re.compile(r"\b((?:mtlframe|mtlframe_example|mtlframe_text)(?:\.\w+)+|"
                         r"(?:mtlframe|mtlframe_example|mtlframe_text)(?:\.\w+)*:\w+)")


def _resolves(ref: str) -> bool:
    """``pkg.mod``, ``pkg.mod.Attr`` or ``pkg.mod:Attr`` names a module or an attribute of one."""
    mod_part, _, attr = ref.partition(":")
    parts = mod_part.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(name)
        for a in parts[cut:] + ([attr] if attr else []):
            if not hasattr(obj, a):
                return False
            obj = getattr(obj, a)
        return True
    return False


def test_every_module_the_docs_name_exists():
    plugin_src = [str(p) for p in REPO.glob("plugins/*/src")]
    sys.path[:0] = [p for p in plugin_src if p not in sys.path]
    bad = []
    for doc in DOCS:
        for ref in sorted(set(_MODULE_REF.findall(_text(doc)))):
            if ref.endswith((".py", ".md", ".yaml", ".toml")) or ref.split(".")[-1] in ("py", "md"):
                continue
            if not _resolves(ref):
                bad.append(f"{_rel(doc)}: {ref}")
    assert not bad, "modules / attributes named in the docs that do not exist:\n" + "\n".join(bad)


def test_readme_plugin_snippet_names_real_modules():
    text = _text(REPO / "README.md")
    toml_block = next(b for lang, b in _code_blocks(text) if lang == "toml" and "entry-points.mtlframe" in b)
    entry = _toml(toml_block)["project"]["entry-points"]["mtlframe"]
    py_block = next(b for lang, b in _code_blocks(text) if lang == "python" and "hookimpl" in b)
    factories = re.findall(r'"(\w+(?:\.\w+)+:\w+)"', py_block)
    assert entry and factories
    sys.path[:0] = [str(p) for p in REPO.glob("plugins/*/src")]
    for ref in [*entry.values(), *factories]:
        assert _resolves(ref), ref


# -- commands ---------------------------------------------------------------------------------------

def _commands() -> list[tuple[Path, str]]:
    """``(doc, command line)`` of every ``mtlframe ...`` command in a shell block or inline code."""
    out = []
    for doc in DOCS:
        text = _text(doc)
        lines = []
        for lang, body in _code_blocks(text):
            if lang in ("bash", "sh", "console", "shell", ""):
                lines += body.replace("\\\n", " ").splitlines()
        # inline code naming a command alone (`mtlframe compare`) is a reference, not a command line
        lines += [c for c in _inline_code(text) if not re.fullmatch(r"mtlframe( recipe)? [a-z]+", c)]
        for line in lines:
            if "mtlframe " not in line:
                continue
            lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars="|&;")
            lexer.whitespace_split = True
            tokens, part = [], []
            for tok in list(lexer) + [";"]:
                if tok in ("|", "||", "&&", ";", "&"):
                    tokens.append(part)
                    part = []
                else:
                    part.append(tok)
            for argv in tokens:
                if len(argv) > 1 and argv[0] == "mtlframe" and argv[1] in COMMANDS:
                    out.append((doc, shlex.join(argv)))
    return out


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("doc,command", _commands(), ids=[c[:60] for _, c in _commands()])
def test_every_command_shown_parses(doc, command, monkeypatch, capsys):
    import argparse

    from mtlframe import cli

    argv = shlex.split(command)[1:]
    if argv[0] == "benchmark":  # the harness's own parser: stop right after it parsed
        parse_args = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, *args, **kwargs):
            raise _Parsed(parse_args(self, *args, **kwargs))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        monkeypatch.syspath_prepend(str(REPO))
        with pytest.raises(_Parsed):
            cli.main(argv)
        return
    seen = []
    for name in [n for n in vars(cli) if n.startswith("cmd_")]:
        monkeypatch.setattr(cli, name, lambda args: seen.append(args) or 0)
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 0 and len(seen) == 1, f"{_rel(doc)}: `{command}` does not parse: {capsys.readouterr().err}"


# -- logged keys ------------------------------------------------------------------------------------

def _logged_key_templates() -> list[tuple[str, str]]:
    """Every key passed to ``self.log`` / ``pl_module.log`` / ``log_dict`` / ``logger.log_metrics`` in
    mtlframe: string literals and f-strings, including those assigned to a variable that is then
    logged. ``{expr}`` parts become ``{}``."""

    def template(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        return None

    def strings(node: ast.AST) -> list[str]:
        t = template(node)
        if t is not None:   # not the constant parts of an f-string
            return [t] if "/" in t else []
        if isinstance(node, ast.IfExp):  # `a if cond else b`: the values, not the condition
            return strings(node.body) + strings(node.orelse)
        return [s for child in ast.iter_child_nodes(node) for s in strings(child)]

    out = []
    for path in sorted((REPO / "mtlframe").rglob("*.py")):
        tree = ast.parse(_text(path))
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            assigned: dict[str, list[ast.AST]] = {}
            for n in ast.walk(func):
                if isinstance(n, ast.Assign):
                    for tgt in n.targets:
                        if isinstance(tgt, ast.Name):
                            assigned.setdefault(tgt.id, []).append(n.value)
            for n in ast.walk(func):
                if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                        and n.func.attr in ("log", "log_dict", "log_metrics") and n.args):
                    continue
                arg = n.args[0]
                if isinstance(arg, ast.Name):
                    found = [s for v in assigned.get(arg.id, []) for s in strings(v)]
                elif isinstance(arg, ast.Dict):
                    found = [s for k in arg.keys if k is not None for s in strings(k)]
                else:
                    found = strings(arg)
                out += [(f"{_rel(path)}:{n.lineno}", t) for t in found]
    return out


def test_the_logged_key_scan_sees_the_known_keys():
    keys = {t for _, t in _logged_key_templates()}
    assert {"train/loss", "train/weight/{}", "train/loss/{}", "train/{}", "{}/{}/{}", "{}/score"} <= keys


def test_every_logged_key_is_documented():
    docs = "\n".join(_text(d) for d in DOCS)
    placeholder = r"(?:<[^>\s]+>|\{[^}\s]+\}|[\w@.]+)"
    missing = []
    for where, key in _logged_key_templates():
        if key == "train/{}":   # "train/" + a name that already starts with aux/: train/aux/<name>
            key = "train/aux/{}"
        pattern = "`" + placeholder.join(re.escape(p) for p in key.split("{}"))
        pattern = pattern.replace(re.escape("/"), "/")
        if not re.search(pattern, docs):
            missing.append(f"{where}: {key}")
    assert not missing, "logged keys not documented in README.md / docs/*.md:\n" + "\n".join(missing)


# -- component parameters ---------------------------------------------------------------------------

def test_every_component_parameter_in_components_md_has_a_description():
    empty = []
    section = ""
    for line in _text(REPO / "docs" / "components.md").splitlines():
        if line.startswith("### "):
            section = line[4:]
        # a `|` inside a cell is written `\|` (docs/mkdocs_hooks.py)
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] if line.startswith("| `") else []
        if len(cells) == 4 and not all(cells[1:]):
            what = ", ".join(k for k, c in zip(("type", "default", "description"), cells[1:]) if not c)
            empty.append(f"{section}: {cells[0]} (no {what})")
    assert not empty, ("parameters without a type annotation, default or description (annotate the constructor, "
                       "add them to the class docstring's Args: and run python docs/gen_components.py):\n"
                       + "\n".join(empty))


# -- the bench extra --------------------------------------------------------------------------------

_IMPORT_TO_DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "pytorch_lightning": "pytorch-lightning",
                   "torch_rechub": "torch-rechub", "deepctr_torch": "deepctr-torch", "PIL": "pillow"}


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_bench_extra_installs_what_the_harness_imports():
    project = _toml(_text(REPO / "pyproject.toml"))["project"]
    available = {_dist_name(r) for r in project["dependencies"] + project["optional-dependencies"]["bench"]}
    local = {"benchmarks", "mtlframe", "mtlframe_text", "mtlframe_example", "mtlframe_torchrec"}
    missing = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(_text(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                dist = _IMPORT_TO_DIST.get(top, top.lower().replace("_", "-"))
                if dist not in available:
                    missing.append(f"{_rel(path)}:{node.lineno} imports {top} (distribution {dist})")
    assert not missing, "add these to the bench extra of pyproject.toml:\n" + "\n".join(missing)

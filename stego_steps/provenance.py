"""Provenance: which code and which settings made an artifact, so that a table is always what the current code
and config compute.

What counts as a stage's code: its `main()` and, transitively, every function, class and module-level constant
of this package that it refers to (imports inside functions included), parsed as an abstract syntax tree.
Docstrings, comments and formatting are not part of the tree; calls to the logger (`log.…`, `logger.…`,
`logging.…`), the `help=` texts of command-line options and the messages of raised errors are removed from it;
the modules `cli` (argument parsing, logging set-up, progress lines), `errors` (how an error is shown) and
`testhooks` (pauses for the interruption tests) are not followed. So an edit that cannot change a result changes
no digest, and an edit of any function a stage computes with changes that stage's digest. Third-party packages
(torch, FAISS, …) and the package's version are recorded but decide nothing.

A rule's provenance (`chain`) is the digest over the steps that decide its output: its own stage and every
stage upstream of it, each with its code digest and its settings. Snakemake receives it as a param, so a change
anywhere upstream re-runs the whole chain even where an intermediate was lost; each job records it beside its
outputs (`record`, under `.provenance/` in the working directory), so that a run without Snakemake's metadata
(a deleted `.snakemake`) still finds artifacts made by other code or settings, or truncated since.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "stego_steps"
PACKAGE_DIR = Path(__file__).resolve().parent
# Modules whose functions only parse arguments, set up logging, show progress, format errors or pause for tests.
BOOKKEEPING_MODULES = frozenset({"cli", "errors", "provenance", "testhooks"})
LOGGER_NAMES = frozenset({"log", "logger", "logging", "LOG"})
RECORDS = ".provenance"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# code digests


class _Strip(ast.NodeTransformer):
    """Remove what cannot change a result: docstrings, logger calls, option help texts, error messages."""

    def _body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        body = [self.visit(stmt) for stmt in body if not _is_logger_call(stmt)]
        return [stmt for stmt in body if stmt is not None] or [ast.Pass()]

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            value = getattr(node, field, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, self._body(value))
        return super().generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.keywords = [k for k in node.keywords if k.arg != "help"]
        return self.generic_visit(node)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if isinstance(node.exc, ast.Call):
            node.exc.args = [ast.Constant("") if isinstance(a, ast.Constant | ast.JoinedStr | ast.BinOp) else a
                             for a in node.exc.args]
        return self.generic_visit(node)


def _is_logger_call(stmt: ast.stmt) -> bool:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return False
    func = stmt.value.func
    while isinstance(func, ast.Attribute):
        func = func.value
    return isinstance(func, ast.Name) and func.id in LOGGER_NAMES and isinstance(stmt.value.func, ast.Attribute)


@dataclass
class _Module:
    definitions: dict[str, ast.stmt]  # top-level def/class/assignment by name
    imports: dict[str, str]  # local name → "module" or "module:name" (package modules only)


def _package_imports(nodes: Iterable[ast.AST]) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PACKAGE:
                found.update({a.asname or a.name: a.name for a in node.names})
            elif node.module.startswith(PACKAGE + "."):
                module = node.module.removeprefix(PACKAGE + ".")
                found.update({a.asname or a.name: f"{module}:{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PACKAGE + ".") and a.asname:
                    found[a.asname] = a.name.removeprefix(PACKAGE + ".")
    return found


@functools.cache
def _module(name: str, package_dir: Path = PACKAGE_DIR) -> _Module | None:
    path = package_dir / f"{name.replace('.', '/')}.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text(), filename=str(path))
    definitions: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[stmt.name] = stmt
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        definitions[node.id] = stmt
    return _Module(definitions, _package_imports(tree.body))


def _references(node: ast.AST, module: str, package_dir: Path) -> set[tuple[str, str]]:
    """(module, name) of the package definitions that `node` refers to."""
    info = _module(module, package_dir)
    assert info is not None
    imports = {**info.imports, **_package_imports(ast.walk(node))}
    found: set[tuple[str, str]] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in imports \
                and ":" not in imports[sub.value.id]:
            found.add((imports[sub.value.id], sub.attr))
        elif isinstance(sub, ast.Name):
            if sub.id in imports:
                target = imports[sub.id]
                found.add(tuple(target.split(":", 1)) if ":" in target else (target, "*"))  # type: ignore[arg-type]
            elif sub.id in info.definitions:
                found.add((module, sub.id))
    return found


def code_closure(module: str, entry: str = "main", package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """`module:name` → normalised source of every package definition that `module.entry` reaches."""
    seen: dict[str, str] = {}
    todo = [(module, entry)]
    while todo:
        mod, name = todo.pop()
        key = f"{mod}:{name}"
        if key in seen or mod in BOOKKEEPING_MODULES:
            continue
        info = _module(mod, package_dir)
        if info is None or name == "*":
            continue  # a whole module used as a namespace: its attributes are followed where used
        found = _definition(mod, name, package_dir)
        if found is None:
            continue
        seen[key], references = found
        todo.extend(references)
    return seen


@functools.cache
def _definition(module: str, name: str, package_dir: Path) -> tuple[str, frozenset[tuple[str, str]]] | None:
    """A definition's normalised tree and the package definitions it refers to."""
    info = _module(module, package_dir)
    node = info.definitions.get(name) if info else None
    if node is None:
        return None
    stripped = _Strip().visit(copy.deepcopy(node))
    return (ast.dump(stripped, annotate_fields=False, include_attributes=False),
            frozenset(_references(node, module, package_dir)))


@functools.cache
def code_digest(module: str, entry: str = "main", package_dir: Path = PACKAGE_DIR) -> str:
    """The digest of what `module.entry` computes with (see the module's docstring for what counts)."""
    return _digest(code_closure(module, entry, package_dir))


def clear_caches() -> None:
    """Forget parsed modules and digests (a process that edits the package, such as a test, re-reads it)."""
    for cached in (_module, _definition, code_digest):
        cached.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# chains and records


def chain(steps: Mapping[str, tuple[str | None, Any]], *, package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The provenance of an artifact decided by `steps`: step name → (stage module or None, settings).

    Returns {"digest": …, "steps": {step: {"code": …, "settings": …}}}: the digest over every step's code
    digest and settings digest."""
    parts = {step: {"code": code_digest(module, package_dir=package_dir) if module else None,
                    "settings": _digest(settings)} for step, (module, settings) in steps.items()}
    return {"digest": _digest(parts), "steps": parts}


def record_path(artifact: str | os.PathLike, workdir: str | os.PathLike = ".") -> Path:
    """Where the provenance record of `artifact` (relative to the working directory) lives."""
    relative = os.path.relpath(os.path.abspath(artifact), os.path.abspath(workdir))
    return Path(workdir) / RECORDS / f"{relative}.json"


def version() -> str:
    from stego_steps import __version__

    return __version__


def write_records(outputs: Iterable[str], provenance: Mapping[str, Any], workdir: str | os.PathLike = "."
                  ) -> list[Path]:
    """Record, for each output of a finished job, the provenance it was made with (rule, wildcards, digest,
    steps: the rule's param), the package version and the artifact's path; written atomically."""
    from stego_steps.artifacts import write_json

    paths = []
    for output in outputs:
        path = record_path(output, workdir)
        write_json(path, {**provenance, "artifact": str(output), "bytes": size(output), "version": version()})
        paths.append(path)
    return paths


def size(artifact: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder: a record that disagrees means a truncated or replaced
    artifact."""
    path = Path(artifact)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def read_record(artifact: str | os.PathLike, workdir: str | os.PathLike = ".") -> dict | None:
    """The record of `artifact`, or None when there is none (or it cannot be read: then nothing is known)."""
    try:
        return json.loads(record_path(artifact, workdir).read_text())
    except (OSError, ValueError):
        return None


def differences(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded and an expected chain: `settings of <step>`, `code of <step>`,
    `<step> added` or `<step> removed`."""
    found = []
    old, new = recorded.get("steps", {}), expected["steps"]
    for step in sorted(set(old) | set(new)):
        if step not in old or step not in new:
            found.append(f"{step} {'added' if step in new else 'removed'}")
            continue
        found.extend(f"{part} of {step}" for part in ("settings", "code") if old[step].get(part) != new[step].get(part))
    return found


def summary(phrases: list[str], limit: int = 4) -> str:
    """`differences` in one short line: `settings of train, code of extract_train and 3 more`."""
    if len(phrases) <= limit:
        return ", ".join(phrases) or "its chain"
    return f"{', '.join(phrases[:limit])} and {len(phrases) - limit} more"


def only_code_differs(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return all(phrase.startswith("code of ") for phrase in differences(recorded, expected))


# ---------------------------------------------------------------------------------------------------------
# `python -m stego_steps.provenance record …`: the last command of every job


def record_main(argv: list[str] | None = None) -> None:
    """The jobs' last command; not a stage (it computes nothing)."""
    parser = argparse.ArgumentParser(description="Record the provenance of a finished job's outputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write the records of a finished job's outputs")
    rec.add_argument("--provenance", required=True, help="the rule's provenance param (JSON)")
    rec.add_argument("outputs", nargs="+")
    args = parser.parse_args(argv)
    write_records(args.outputs, json.loads(args.provenance))


if __name__ == "__main__":
    record_main()

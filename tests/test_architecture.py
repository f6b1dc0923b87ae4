"""The sans-IO boundary: nothing under src/roost/proto may import an I/O
module, directly or through another roost module it imports.

Read from the source with ``ast``, never by importing: an import that only
happens inside a function, or under a condition, counts too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import roost

PACKAGE = Path(roost.__file__).parent
PROTO = PACKAGE / "proto"

FORBIDDEN = frozenset(
    {
        "asyncio",
        "os",
        "select",
        "selectors",
        "socket",
        "sqlite3",
        "subprocess",
        "threading",
        "time",
        "uvloop",
        # The same capabilities under other names.
        "concurrent",
        "multiprocessing",
        "signal",
        "ssl",
        "http.client",
        "urllib.request",
        "_thread",
        "mmap",
        "fcntl",
        "shutil",
        "tempfile",
    }
)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports, as absolute dotted names: ``import``
    and ``from`` statements anywhere (also inside functions), relative ones
    resolved against ``module``, and ``__import__``/``importlib.import_module``
    calls with a constant name."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            found.add(mod)
            # ``from pkg import sub`` may import a submodule.
            found.update(f"{mod}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if (
                name in ("__import__", "import_module")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def forbidden_in(names: set[str]) -> set[str]:
    bad = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if ".".join(parts[:i]) in FORBIDDEN:
                bad.add(name)
    return bad


def _source_of(module: str) -> tuple[Path, bool] | None:
    """The file of a roost module, or None for a name that is not one (an
    attribute imported with ``from``, or a third-party module)."""
    if module != "roost" and not module.startswith("roost."):
        return None
    rel = Path(*module.split("."))
    as_package = PACKAGE.parent / rel / "__init__.py"
    if as_package.exists():
        return as_package, True
    as_module = (PACKAGE.parent / rel).with_suffix(".py")
    if as_module.exists():
        return as_module, False
    return None


def closure(start: list[Path]) -> dict[str, set[str]]:
    """module -> its imports, for the start files and every roost module they
    reach (a module's parent packages run on import too)."""
    todo = [(_module_name(p), p, p.name == "__init__.py") for p in start]
    seen: dict[str, set[str]] = {}
    while todo:
        module, path, is_package = todo.pop()
        if module in seen:
            continue
        names = imports_of(path.read_text(), module, is_package)
        seen[module] = names
        reached = set(names)
        for name in names:
            parts = name.split(".")
            reached.update(".".join(parts[:i]) for i in range(1, len(parts)))
        for name in reached:
            found = _source_of(name)
            if found is not None and name not in seen:
                todo.append((name, found[0], found[1]))
    return seen


PROTO_FILES = sorted(PROTO.glob("*.py"))


def test_proto_has_the_modules_the_checks_expect():
    names = {p.name for p in PROTO_FILES}
    assert {"__init__.py", "frames.py", "handshake.py", "messages.py"} <= names


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: p.name)
def test_proto_module_imports_no_io(path):
    module = _module_name(path)
    names = imports_of(path.read_text(), module, path.name == "__init__.py")
    assert forbidden_in(names) == set(), f"{module} imports I/O"


def test_nothing_proto_reaches_imports_io():
    """roost modules that proto imports (roost.errors, ...) are held to the
    same rule, or the boundary leaks through them."""
    graph = closure(PROTO_FILES)
    assert "roost.errors" in graph  # the walk does follow roost imports
    leaks = {m: forbidden_in(names) for m, names in graph.items() if forbidden_in(names)}
    assert leaks == {}


# ---- the checker itself can fail -----------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import os.path",
        "import asyncio as aio",
        "from select import epoll",
        "from time import monotonic",
        "from concurrent.futures import ThreadPoolExecutor",
        "import json, sqlite3",
        "def f():\n    import threading\n",
        "try:\n    import uvloop\nexcept ImportError:\n    pass\n",
        "if False:\n    import subprocess\n",
        "mod = __import__('selectors')",
        "import importlib\nmod = importlib.import_module('os')",
        "class A:\n    def m(self):\n        from os import getpid\n",
        "from urllib import request",
    ],
)
def test_the_checker_catches(source):
    assert forbidden_in(imports_of(source, "roost.proto.x")) != set()


@pytest.mark.parametrize(
    "source",
    [
        "import base64, hashlib, binascii",
        "from urllib.parse import urlsplit",
        "import msgspec",
        "from enum import IntEnum",
        "from roost.errors import ProtocolError",
        "from .frames import encode_frame",
        "import timeit_is_not_time",
        "import osx",
    ],
)
def test_the_checker_allows(source):
    assert forbidden_in(imports_of(source, "roost.proto.x")) == set()


def test_relative_imports_resolve():
    assert "roost.proto.frames" in imports_of("from .frames import x", "roost.proto.handshake")
    assert "roost.errors" in imports_of("from ..errors import E", "roost.proto.handshake")
    assert "roost.proto.frames" in imports_of(
        "from .frames import x", "roost.proto", is_package=True
    )
    assert "roost.proto" in imports_of("from . import frames", "roost.proto.handshake")


def test_the_closure_follows_a_leak_through_another_module(tmp_path, monkeypatch):
    """A proto module importing a roost module that imports ``socket`` is caught."""
    pkg = tmp_path / "roost"
    (pkg / "proto").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "proto" / "__init__.py").write_text("")
    (pkg / "proto" / "clean.py").write_text("from roost.helper import f\n")
    (pkg / "helper.py").write_text("import socket\n\ndef f():\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = closure([pkg / "proto" / "clean.py"])
    assert forbidden_in(graph["roost.helper"]) == {"socket"}

"""The architecture's import rules, checked on the source tree.

- ``signaling``, ``recorder``, ``identity`` and ``business`` are leaves: none imports another
  leaf or ``server``;
- ``recorder``, ``identity`` and ``business`` never touch the database or HTTP;
- core ``signaling`` never imports ``signaling.contrib`` (test and benchmark tooling);
- the shipped packages never import the development tooling (``devservices``, ``bench``) or the
  tests;
- ``devservices`` and ``bench`` never import the tests (the tests import them);
- the modules of ``server`` import each other without a cycle.

Imports under ``if TYPE_CHECKING:`` are for the type checker only and do not count; imports
inside functions do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LEAVES = ("signaling", "recorder", "identity", "business")
#: third-party packages that mean "database" or "HTTP"
DB_OR_HTTP = (
    "sqlmodel",
    "sqlalchemy",
    "aiohttp",
    "alembic",
    "psycopg",
    "redis",
    "aiobotocore",
    "boto3",
)
NO_DB_OR_HTTP = ("recorder", "identity", "business")
#: what pyproject.toml ships
SHIPPED = ("server", *LEAVES, "certs")
#: development tooling of a checkout, which the tests use
TOOLING = ("devservices", "bench")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the modules ``path`` (module ``module``) imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from . import x`` / ``from pkg import sub`` may name submodules
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _modules(root: Path, package: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def violations(root: Path) -> list[str]:
    """Every broken rule in the tree at ``root``, one line each (empty when the tree is clean)."""
    problems: list[str] = []
    for leaf in LEAVES:
        if not (root / leaf).is_dir():
            continue
        for module, path in _modules(root, leaf).items():
            for name in sorted(_imports(path, module)):
                top = _top(name)
                if top != leaf and top in (*LEAVES, "server"):
                    problems.append(f"{module} imports {name}: {leaf} is a leaf")
                if leaf in NO_DB_OR_HTTP and top in DB_OR_HTTP:
                    problems.append(
                        f"{module} imports {name}: {leaf} never touches the database or HTTP"
                    )
                if (
                    leaf == "signaling"
                    and not module.startswith("signaling.contrib")
                    and name.startswith("signaling.contrib")
                ):
                    problems.append(
                        f"{module} imports {name}: core signaling never imports its contrib tools"
                    )
    for package in (*SHIPPED, *TOOLING):
        if not (root / package).is_dir():
            continue
        for module, path in _modules(root, package).items():
            for name in sorted(_imports(path, module)):
                top = _top(name)
                if package in SHIPPED and top in (*TOOLING, "tests"):
                    problems.append(
                        f"{module} imports {name}: shipped code never imports {top}, "
                        "which is not shipped"
                    )
                elif package in TOOLING and top == "tests":
                    problems.append(f"{module} imports {name}: {package} never imports the tests")
    server = _modules(root, "server") if (root / "server").is_dir() else {}
    graph = {
        module: {name for name in _imports(path, module) if name in server and name != module}
        for module, path in server.items()
    }
    problems.extend(f"import cycle in server: {' -> '.join(cycle)}" for cycle in _cycles(graph))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One example cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        members = set(component)
        path, seen = [component[0]], {component[0]}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            back = [w for w in nxt if w == path[0]]
            if back or not nxt:
                cycles.append([*path, path[0]])
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:
                start = path.index(nxt[0])
                cycles.append([*path[start:], nxt[0]])
                break
            path.append(fresh[0])
            seen.add(fresh[0])
    return cycles


def test_the_tree_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "recorder/__init__.py": "",
                "recorder/a.py": "from identity import face_match\n",
                "identity/__init__.py": "",
            },
            "recorder.a imports identity: recorder is a leaf",
        ),
        (
            {"signaling/__init__.py": "", "signaling/b.py": "def f():\n    import server.db\n"},
            "signaling.b imports server.db: signaling is a leaf",
        ),
        (
            {"identity/__init__.py": "", "identity/c.py": "from sqlmodel import Session\n"},
            "identity.c imports sqlmodel: identity never touches the database or HTTP",
        ),
        (
            {
                "signaling/__init__.py": "",
                "signaling/contrib/__init__.py": "",
                "signaling/hub.py": "from .contrib import tools\n",
            },
            "signaling.hub imports signaling.contrib: core signaling never imports its contrib tools",
        ),
        (
            {"server/__init__.py": "", "server/cli.py": "from devservices import RedisServer\n"},
            "server.cli imports devservices: shipped code never imports devservices, which is "
            "not shipped",
        ),
        (
            {"certs/__init__.py": "", "certs/devcert.py": "def f():\n    import tests.helpers\n"},
            "certs.devcert imports tests.helpers: shipped code never imports tests, which is not "
            "shipped",
        ),
        (
            {"bench/calls.py": "from tests.services import PostgresCluster\n"},
            "bench.calls imports tests.services: bench never imports the tests",
        ),
        (
            {"devservices/__init__.py": "", "devservices/nginx.py": "from tests import helpers\n"},
            "devservices.nginx imports tests: devservices never imports the tests",
        ),
        (
            {
                "server/__init__.py": "",
                "server/a.py": "from . import b\n",
                "server/b.py": "from .c import x\n",
                "server/c.py": "def f():\n    from .a import y\n",
            },
            "import cycle in server: server.a -> server.b -> server.c -> server.a",
        ),
    ],
)
def test_a_broken_rule_is_reported(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    _write(tmp_path, files)
    assert expected in violations(tmp_path)


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "server/__init__.py": "",
            "server/keys.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .svc import S\n",
            "server/svc.py": "from .keys import K\n",
            "recorder/__init__.py": "import typing\nif typing.TYPE_CHECKING:\n    import server\n",
        },
    )
    assert violations(tmp_path) == []

"""The layering of design.md, checked on the source with ``ast``.

Imports point down the layers only::

    core <- wire <- net <- host <- services <- node <- cli, demo

where the services are ``protocols``, ``dht``, ``content``, ``pubsub`` and ``tasks``. Beyond the
ranks, a few rules keep the layers honest:

* ``peerstack`` (the package root, which only holds the version) and ``peerstack.errors`` are
  importable by every module, like ``core``.
* ``wire`` is sans-IO: no asyncio, sockets, threads or clock; time is passed in as ``now``.
* services are written against ``host.interface``: from the host layer they may import only
  that module, never ``host.host`` (and with it ``net``), nor sockets or uvloop. They do not
  import one another either: the node composes them and hands one to another as an object
  (content routing reaches the DHT through an adapter the node builds, not by import).
* ``host.interface`` is the contract the services and the simulator build on, so it depends on
  nothing but core and errors.
* ``sim/`` stands where the services stand (it replaces the host below them), so it obeys the
  same rules, and may import services because it drives them.

Every import counts: at module level, inside functions (lazy imports) and under
``TYPE_CHECKING`` (a type-only import is still a dependency of the code's design).

Logging is configured by entry points only: no module configures logging while it is being
imported, and ``logging.basicConfig``/``dictConfig``/``fileConfig`` appear only under ``cli/``
and in ``demo.py``.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "peerstack"
SIM = ROOT / "sim"

# Ranks of the layers; a module may import modules of its own rank or lower.
BASE, CORE, WIRE, NET, HOST, SERVICE, NODE, ENTRY = range(8)

SERVICES = frozenset({"protocols", "dht", "content", "pubsub", "tasks"})
SUBPACKAGE_RANK = {
    "core": CORE,
    "wire": WIRE,
    "net": NET,
    "host": HOST,
    **dict.fromkeys(SERVICES, SERVICE),
    "cli": ENTRY,
}
# Top-level modules (peerstack/x.py) belong to the node layer unless named here.
TOP_LEVEL_RANK = {"errors": BASE, "demo": ENTRY}

# Imports of one service package by another that the design allows, as (importer, imported).
# Empty on purpose: services meet in the node, which passes one to another as an object.
ALLOWED_SERVICE_IMPORTS: frozenset[tuple[str, str]] = frozenset()

# What a sans-IO wire module must not touch: event loops, sockets, threads, the clock.
WIRE_FORBIDDEN = frozenset(
    {"asyncio", "socket", "selectors", "ssl", "threading", "time", "uvloop", "trio", "anyio"}
)
# Services (and sim) sit on the Host interface, not on TCP.
SERVICE_FORBIDDEN = frozenset({"socket", "ssl", "uvloop"})
# Core is plain data and crypto: no event loop or network either.
CORE_FORBIDDEN = frozenset({"asyncio", "socket", "selectors", "ssl", "uvloop"})

LOGGING_CONFIG_FUNCS = frozenset({"basicConfig", "dictConfig", "fileConfig"})
LOGGING_CONFIG_METHODS = frozenset({"addHandler", "setLevel", "setFormatter", "disable"})


@dataclass(frozen=True)
class Module:
    """One source file: its dotted name, its path and its parsed tree."""

    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> list[str]:
        """The dotted parts of the package relative imports resolve against."""
        parts = self.name.split(".")
        return parts if self.path.name == "__init__.py" else parts[:-1]


@dataclass(frozen=True)
class Import:
    """One imported module name, with the line it is on."""

    target: str
    line: int


def _modules(base: Path, top: Path) -> list[Module]:
    """Every hand-written module under ``top``, named relative to ``base`` (no generated pb)."""
    found = []
    for path in sorted(top.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.append(Module(".".join(parts), path, tree))
    return found


def _imports(module: Module, known: set[str]) -> Iterator[Import]:
    """Every module an import statement anywhere in ``module`` names, relative ones resolved.

    ``from a import b`` names ``a.b`` when that is one of our modules, else ``a`` (``b`` is then
    a class or function of ``a``); names outside peerstack are yielded as written.
    """
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                keep = len(module.package) - (node.level - 1)
                base = ".".join(module.package[:keep])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            children = [f"{target}.{a.name}" for a in node.names]
            submodules = [c for c in children if c in known]
            if len(submodules) < len(children):
                yield Import(target, node.lineno)
            for child in submodules:
                yield Import(child, node.lineno)


def _rank(name: str) -> int | None:
    """The layer of a ``peerstack`` module, or None when it is in no known place."""
    parts = name.split(".")
    if parts == ["peerstack"]:
        return BASE
    if len(parts) == 2 and parts[1] not in SUBPACKAGE_RANK:
        return TOP_LEVEL_RANK.get(parts[1], NODE)
    return SUBPACKAGE_RANK.get(parts[1])


def _service(name: str) -> str | None:
    """The service package a ``peerstack`` module belongs to, if any."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SERVICES else None


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _service_rules(importer: str, target: str) -> list[str]:
    """What a service-level module (a service or sim) must not import from peerstack."""
    problems = []
    rank = _rank(target)
    below_host = rank is not None and WIRE <= rank <= HOST
    if below_host and target not in ("peerstack.host", "peerstack.host.interface"):
        problems.append(f"imports {target}; services use peerstack.host.interface only")
    own = _service(importer)
    other = _service(target)
    crosses = other is not None and own is not None and other != own
    if crosses and (own, other) not in ALLOWED_SERVICE_IMPORTS:
        problems.append(f"service {own} imports service {other} ({target})")
    return problems


def _violations(modules: list[Module], known: set[str]) -> list[str]:
    """Every import that breaks a rule, as ``path:line: module: problem``."""
    out = []
    for module in modules:
        is_sim = _top(module.name) == "sim"
        own_rank = SERVICE if is_sim else _rank(module.name)
        if own_rank is None:
            out.append(f"{module.path}: {module.name} is in no layer; add it to this test")
            continue
        seen: set[tuple[str, str]] = set()
        for imp in _imports(module, known):
            problems: list[str] = []
            top = _top(imp.target)
            if top == "peerstack":
                if imp.target not in known:
                    continue
                rank = _rank(imp.target)
                if rank is None:
                    problems.append(f"imports {imp.target}, which is in no layer")
                elif rank > own_rank:
                    problems.append(f"imports {imp.target} from a higher layer")
                if own_rank == SERVICE:
                    problems += _service_rules(module.name, imp.target)
                is_interface = module.name == "peerstack.host.interface"
                if is_interface and rank is not None and rank > CORE:
                    problems.append(f"the host interface imports {imp.target}")
            elif own_rank == WIRE and top in WIRE_FORBIDDEN:
                problems.append(f"sans-IO wire imports {imp.target}")
            elif own_rank == CORE and top in CORE_FORBIDDEN:
                problems.append(f"core imports {imp.target}")
            elif own_rank == SERVICE and top in SERVICE_FORBIDDEN:
                problems.append(f"service-level code imports {imp.target}")
            for problem in problems:
                key = (problem, module.name)
                if key not in seen:
                    seen.add(key)
                    out.append(
                        f"{module.path.relative_to(ROOT)}:{imp.line}: {module.name}: {problem}"
                    )
    return out


@functools.cache
def _package_tree() -> tuple[Module, ...]:
    """The parsed package, once per test run (several tests walk it)."""
    return tuple(_modules(SRC, PACKAGE))


def _package_modules() -> list[Module]:
    return list(_package_tree())


def _known(modules: list[Module]) -> set[str]:
    return {m.name for m in modules}


def test_sources_found() -> None:
    """The walk sees the tree it is meant to guard (a wrong path would pass everything)."""
    names = _known(_package_modules())
    for expected in (
        "peerstack.errors",
        "peerstack.core.varint",
        "peerstack.wire.yamux",
        "peerstack.net.connection",
        "peerstack.host.interface",
        "peerstack.host.host",
        "peerstack.dht.service",
        "peerstack.node",
    ):
        assert expected in names
    assert _modules(ROOT, SIM), "sim/ has no modules"


def test_imports_point_down_the_layers() -> None:
    modules = _package_modules()
    sim = _modules(ROOT, SIM)
    known = _known(modules) | _known(sim)
    problems = _violations(modules + sim, known)
    assert problems == [], "layering violations:\n" + "\n".join(problems)


def _check(source: str, name: str, extra: dict[str, str] | None = None) -> list[str]:
    """Run the rules on made-up modules, to show the checker catches what it should."""
    files = {name: source, **(extra or {})}
    modules = []
    for dotted, text in files.items():
        path = PACKAGE.joinpath(*dotted.split(".")[1:]).with_suffix(".py")
        modules.append(Module(dotted, path, ast.parse(text)))
    known = _known(_package_modules()) | set(files)
    return _violations(modules[:1], known)


@pytest.mark.parametrize(
    ("name", "source", "needle"),
    [
        ("peerstack.core.x", "from peerstack.wire import yamux\n", "higher layer"),
        ("peerstack.wire.x", "import asyncio\n", "sans-IO"),
        ("peerstack.wire.x", "def f() -> None:\n    import socket\n", "sans-IO"),
        ("peerstack.wire.x", "from time import monotonic\n", "sans-IO"),
        ("peerstack.net.x", "from peerstack.host import host\n", "higher layer"),
        ("peerstack.dht.x", "from peerstack.host.host import Host\n", "host.interface only"),
        ("peerstack.dht.x", "from peerstack.net import tcp\n", "host.interface only"),
        ("peerstack.content.x", "from peerstack.dht import service\n", "imports service dht"),
        ("peerstack.content.x", "def f() -> None:\n    from ..dht import query\n", "service dht"),
        ("peerstack.protocols.x", "from peerstack import node\n", "higher layer"),
        ("peerstack.node", "from peerstack.cli import main\n", "higher layer"),
        ("peerstack.dht.x", "import uvloop\n", "service-level"),
        ("peerstack.host.interface", "from peerstack.net import stream\n", "host interface"),
        ("peerstack.newpkg.x", "import os\n", "no layer"),
    ],
)
def test_checker_catches(name: str, source: str, needle: str) -> None:
    problems = _check(source, name)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    ("name", "source"),
    [
        (
            "peerstack.wire.x",
            "from peerstack.core import varint\nfrom ..errors import DecodeError\n",
        ),
        ("peerstack.dht.x", "from peerstack.host.interface import Host\nimport asyncio\n"),
        ("peerstack.content.bitswap.x", "from .. import blockstore\n"),
        ("peerstack.node", "from peerstack.dht import service\nfrom peerstack.host import host\n"),
        ("peerstack.cli.x", "from peerstack import node\n"),
        ("peerstack.demo", "from peerstack.cli import common\n"),
    ],
)
def test_checker_allows(name: str, source: str) -> None:
    assert _check(source, name) == []


def _logging_calls(tree: ast.AST) -> Iterator[tuple[int, str, bool]]:
    """Logging-configuration calls: (line, what, True when it runs at import time).

    Module-level code runs at import; bodies of functions do not (class bodies do).
    """

    def walk(node: ast.AST, at_import: bool) -> Iterator[tuple[int, str, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = at_import and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else ""
                name = func.id if isinstance(func, ast.Name) else name
                configures = name in LOGGING_CONFIG_FUNCS
                if configures or (name in LOGGING_CONFIG_METHODS and inner):
                    yield child.lineno, name, inner
            yield from walk(child, inner)

    yield from walk(tree, True)


def _logging_violations(modules: list[Module]) -> list[str]:
    out = []
    for module in modules:
        entry = module.name.startswith("peerstack.cli") or module.name == "peerstack.demo"
        for line, what, at_import in _logging_calls(module.tree):
            where = f"{module.path.relative_to(ROOT)}:{line}: {module.name}"
            if at_import:
                out.append(f"{where}: {what}() runs at import")
            elif what in LOGGING_CONFIG_FUNCS and not entry:
                out.append(f"{where}: {what}() outside an entry point (cli/, demo)")
    return out


def test_no_logging_configuration_outside_entry_points() -> None:
    problems = _logging_violations(_package_modules() + _modules(ROOT, SIM))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "source", "needle"),
    [
        ("peerstack.dht.x", "import logging\nlogging.basicConfig()\n", "runs at import"),
        (
            "peerstack.dht.x",
            "import logging\ndef f() -> None:\n    logging.basicConfig()\n",
            "outside an entry point",
        ),
        ("peerstack.net.x", "import logging\nlogging.getLogger().setLevel(10)\n", "at import"),
        ("peerstack.cli.x", "import logging\nlogging.basicConfig()\n", "runs at import"),
    ],
)
def test_logging_checker_catches(name: str, source: str, needle: str) -> None:
    module = Module(name, PACKAGE / "x.py", ast.parse(source))
    problems = _logging_violations([module])
    assert any(needle in p for p in problems), problems


def test_logging_checker_allows_entry_point_setup() -> None:
    source = "import logging\ndef main() -> None:\n    logging.basicConfig(level=10)\n"
    module = Module("peerstack.cli.main", PACKAGE / "cli" / "main.py", ast.parse(source))
    assert _logging_violations([module]) == []

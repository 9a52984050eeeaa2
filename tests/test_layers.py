"""Layers import one way: no import cycle between taxiway's modules, counting the imports made
only for type checking (`if TYPE_CHECKING:`), since those are the same coupling. Inside proxy/,
the modules a request runs through import strictly downwards, in the order the README draws
(app -> server -> forward -> upstream -> http1): a lower layer calls back through a base class
it declares itself (forward.Downstream, forward.ProxyContext, server.ListenerContext,
upstream.UpstreamEvents)."""

from __future__ import annotations

import ast
from pathlib import Path

import taxiway

SRC = Path(taxiway.__file__).parent
# proxy/'s layers, top first; a module may import only modules of a later layer.
PROXY_LAYERS = (("command",), ("app",), ("server",), ("forward",),
                ("upstream", "waitqueue", "accesslog", "settings", "healthcheck", "heap", "handover"),
                ("http1", "logline"), ("headscan",))


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_proxy_imports_downwards_only() -> None:
    rank = {f"taxiway.proxy.{m}": i for i, layer in enumerate(PROXY_LAYERS) for m in layer}
    graph = import_graph()
    assert set(rank) == {m for m in graph if m.startswith("taxiway.proxy.") and m != "taxiway.proxy"}, \
        "a new proxy/ module: give it its layer in PROXY_LAYERS"
    sideways_or_up = sorted((a, b) for a in rank for b in graph[a] if b in rank and rank[b] <= rank[a])
    assert sideways_or_up == []

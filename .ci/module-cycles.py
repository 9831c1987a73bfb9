#!/usr/bin/env python3
"""Fails when server/src has an import cycle between modules.

Builds the graph of `crate::…` and `super::…` paths (comments and
`#[cfg(test)] mod tests` left out) between the modules of server/src, at two
depths: top-level modules (`node`, `cluster`, …) and their submodules
(`node::routing`, `controller::state`, …). A module may use its own
submodules and its parent; any other cycle is reported with its members.
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else "server/src"


def module_of(path):
    parts = os.path.relpath(path, ROOT)[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts) or "crate"


modules = {}
for folder, _, files in os.walk(ROOT):
    for f in files:
        if f.endswith(".rs"):
            path = os.path.join(folder, f)
            modules[module_of(path)] = path


def resolve(parts):
    for k in range(len(parts), 0, -1):
        name = "::".join(parts[:k])
        if name in modules:
            return name
    return None


edges = set()
for name, path in modules.items():
    src = open(path, encoding="utf-8").read()
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", src, flags=re.S)
    for m in re.finditer(r"\bcrate::([A-Za-z_][A-Za-z0-9_:]*)", src):
        target = resolve(m.group(1).split("::"))
        if target and target != name:
            edges.add((name, target))
    parent = name.split("::")[:-1]
    for m in re.finditer(r"\bsuper::([A-Za-z_][A-Za-z0-9_:]*)", src):
        target = resolve(parent + m.group(1).split("::"))
        if target and target != name:
            edges.add((name, target))


def cycles(depth):
    def cut(m):
        return "::".join(m.split("::")[:depth])

    graph = {}
    for a, b in edges:
        a, b = cut(a), cut(b)
        nested = a.startswith(b + "::") or b.startswith(a + "::")
        if a != b and not nested:
            graph.setdefault(a, set()).add(b)
    # Tarjan's strongly connected components.
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


bad = [(d, c) for d in (1, 2) for c in cycles(d)]
for depth, component in bad:
    print(f"module import cycle (depth {depth}): {' <-> '.join(component)}")
if bad:
    sys.exit(1)
print(f"module-cycles: no import cycles among {len(modules)} modules of {ROOT}")

"""The layers: every import points down (interface -> analyses -> store / evaluate -> geometry -> core).

Read from the source with `ast`, so a function-level import counts as much as a module-level one.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what each layer may import besides itself (kernels is a leaf; experiments sits above landscape)
ALLOWED = {
    "landscape.core": set(),
    "landscape.geometry": {"landscape.core"},
    "landscape.evaluate": {"landscape.core", "landscape.geometry", "landscape_kernels"},
    "landscape.store": {"landscape.core"},
    "landscape.analyses": {"landscape.core", "landscape.geometry", "landscape.evaluate", "landscape.store", "landscape_kernels"},
    "landscape": {"landscape.core", "landscape.geometry", "landscape.evaluate", "landscape.store",
                  "landscape.analyses", "landscape_kernels"},
    "landscape_kernels": set(),
    "experiments": {"landscape", "landscape.core", "landscape.geometry", "landscape.evaluate", "landscape.store",
                    "landscape.analyses", "landscape_kernels"},
}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to (None: not one of ours)."""
    parts = module.split(".")
    if parts[0] in ("landscape_kernels", "experiments"):
        return parts[0]
    if parts[0] != "landscape":
        return None
    if len(parts) > 1 and f"landscape.{parts[1]}" in ALLOWED:
        return f"landscape.{parts[1]}"
    return "landscape"


# source folder -> the import name of what it holds (kernels/ holds the package landscape_kernels)
SOURCES = {"landscape": "landscape", os.path.join("kernels", "landscape_kernels"): "landscape_kernels",
           "experiments": "experiments"}


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)
    for folder, package in SOURCES.items():
        if rel.startswith(folder + os.sep):
            rel = package + rel[len(folder):]
    rel = rel[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports(path: str, as_if: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file at `path`, read as the file `as_if` of
    the repository (relative imports resolved from there)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    here = module_name(as_if)
    package = here if as_if.endswith("__init__.py") else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from landscape import analyses` imports the layer `landscape.analyses`
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def sources() -> list[str]:
    files = []
    for top in SOURCES:
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(dirpath, n) for n in names if n.endswith(".py")]
    return sorted(files)


def violations(files: list[str], as_if: str | None = None) -> list[str]:
    bad = []
    for path in files:
        where = as_if or path
        own = layer_of(module_name(where))
        for line, target in imports(path, where):
            other = layer_of(target)
            if other is None or other == own:
                continue
            if other not in ALLOWED[own]:
                bad.append(f"{os.path.relpath(where, ROOT)}:{line}: {own} imports {target}")
    return bad


def test_every_import_points_down() -> None:
    assert violations(sources()) == []


def test_every_layer_says_what_it_may_import() -> None:
    for layer in ("core", "geometry", "evaluate", "store", "analyses"):
        doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "landscape", layer, "__init__.py")).read()))
        assert doc and "May import" in doc, layer


@pytest.mark.parametrize("source, target", [
    ("landscape/core/params.py", "from landscape.store.store import Store"),
    ("landscape/geometry/lines.py", "from ..evaluate.engine import Evaluator"),
    ("landscape/store/grid.py", "    from landscape.analyses import grids"),
    ("kernels/landscape_kernels/launch.py", "import landscape"),
    ("landscape/api.py", "import experiments.cli"),
])
def test_an_upward_import_is_caught(tmp_path, source, target) -> None:
    """The check itself: the real file passes; with an upward import added inside a function it fails."""
    path = os.path.join(ROOT, source)
    assert violations([path]) == []
    probe = tmp_path / "probe.py"
    probe.write_text(open(path).read() + "\n\ndef _probe():\n    " + target.strip() + "\n")
    assert len(violations([str(probe)], as_if=path)) == 1

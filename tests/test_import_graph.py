"""The packages import one way (docs/packages.md): each imports only the packages below it.

Read from the source with ``ast``, so an import hidden inside a function counts too. ``accel`` is the only
package that may import ``training``, and only inside the functions of the commands that train or export
(PyTorch is an optional extra: ``accel report`` must work without it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What each package may import of ours (docs/packages.md's table).
ALLOWED = {
    "spec": set(),
    "outfiles": {"spec"},
    "trace_format": {"spec", "outfiles"},
    "rtl": {"spec", "outfiles"},
    "sim": {"spec", "trace_format"},
    "verification": {"spec", "outfiles", "trace_format", "rtl", "sim"},
    "training": {"spec", "outfiles", "trace_format"},
    "accel": {"spec", "outfiles", "trace_format", "rtl", "sim", "verification", "traces", "training"},
    "traces": set(),
}
# Imported by ``accel`` only inside functions, never at module level.
LAZY_ONLY = {"training"}
# Third-party packages only the training side uses.
TRAINING_ONLY = {"torch", "sklearn", "torchvision"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(top-level package, at module level)`` of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a module-level ``if``/``try`` are module level too
        if isinstance(node, ast.If | ast.Try):
            module_level.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(name.split(".")[0], id(node) in module_level) for name in names]
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_lies_below_it(package):
    assert _modules(package), f"package {package!r} has no modules"
    ours = set(ALLOWED)
    problems = []
    for path in _modules(package):
        for name, at_module_level in _imports(path):
            where = path.relative_to(REPO)
            if name in ours and name != package and name not in ALLOWED[package]:
                problems.append(f"{where} imports {name}")
            if name in LAZY_ONLY and package != name and at_module_level:
                problems.append(f"{where} imports {name} at module level")
            if name in TRAINING_ONLY and package not in ("training", "accel"):
                problems.append(f"{where} imports {name}")
            if name in TRAINING_ONLY and package == "accel" and at_module_level:
                problems.append(f"{where} imports {name} at module level")
    assert not problems, "\n".join(problems)


def test_the_allowed_graph_has_no_cycle():
    seen: dict[str, int] = {}

    def depth(package: str, path: tuple[str, ...] = ()) -> int:
        assert package not in path, f"cycle: {' -> '.join((*path, package))}"
        if package not in seen:
            seen[package] = 1 + max((depth(d, (*path, package)) for d in ALLOWED[package]), default=0)
        return seen[package]

    for package in ALLOWED:
        depth(package)


def test_every_package_is_in_the_table_and_installed():
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert on_disk == set(ALLOWED)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for package in ALLOWED:
        assert f'"{package}*"' in pyproject, f"{package} missing from pyproject's package list"


def test_the_detector_sees_hidden_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import numpy\ntry:\n    import sim.engine\nexcept ImportError:\n    pass\n"
                      "def f():\n    from training import train\n")  # fmt: skip
    assert _imports(source) == [("numpy", True), ("sim", True), ("training", False)]

"""Layers import downward only: schemas and the shared package know no tier, and
the two tiers do not know each other."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

# package -> the top-level packages of ours it must never import
FORBIDDEN = {
    "pushline": {"web", "workers"},
    "schemas": {"web", "workers"},
    "web": {"workers"},
    "workers": {"web"},
}
OURS = {"pushline", "schemas", "web", "workers", "bench", "tests"}


def imported(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out & OURS


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_no_layer_above_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {str(f.relative_to(ROOT)): sorted(imported(f) & FORBIDDEN[package]) for f in files}
    assert {f: w for f, w in wrong.items() if w} == {}


def test_the_check_sees_a_function_level_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from workers.replay import prune\n    import web.push\n")
    assert imported(sample) == {"workers", "web"}

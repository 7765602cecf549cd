"""The shape of the package: stages import one way, with no import hidden inside a function."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "scvae"


def test_the_import_contract_is_kept():
    """import-linter's contracts in pyproject.toml: the layers of the stages, no torch in the
    data stage, no AnnData in the minibatch, model and training stages."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([lint], cwd=PACKAGE.parent, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "BROKEN" not in run.stdout and run.stdout.count("KEPT") >= 4


def _local_package_imports(tree: ast.AST) -> list[int]:
    """Lines of relative (package) imports made inside a function body."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.level > 0:
                    lines.append(inner.lineno)
    return lines


def test_no_package_import_hides_inside_a_function():
    """A function-local import of scvae's own modules is how a cycle hides; there is none."""
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _local_package_imports(ast.parse(path.read_text())))
    }
    assert found == {}

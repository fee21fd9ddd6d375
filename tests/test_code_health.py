"""Code-health rules that a linter does not express: every function in the package stays short."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sparsesearch"
MAX_FUNCTION_LINES = 80


def _long_functions(root: Path, limit: int) -> list[str]:
    """``path:line name (n lines)`` for every function or method longer than ``limit`` lines.

    A function's length runs from its ``def`` line to its last line (decorators not counted), so nested
    functions count towards the function that holds them as well as on their own.
    """
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    rel = path.relative_to(root.parent)
                    offenders.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def test_long_function_finder_counts_def_to_last_line(tmp_path: Path) -> None:
    def body(indent: str) -> str:
        return "\n".join(f"{indent}x{i} = {i}" for i in range(4))

    source = f"def short():\n{body('    ')}\n\n\nclass C:\n    @staticmethod\n    def m():\n{body('        ')}\n"
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(source)
    # short: def line + 4 body lines = 5; C.m: the same (its decorator is not counted)
    assert _long_functions(package, 5) == []
    assert _long_functions(package, 4) == ["pkg/m.py:1 short (5 lines)", "pkg/m.py:10 m (5 lines)"]


def test_every_function_in_the_package_is_under_the_limit() -> None:
    offenders = _long_functions(PACKAGE, MAX_FUNCTION_LINES)
    assert not offenders, (
        f"{len(offenders)} function(s) in sparsesearch/ exceed {MAX_FUNCTION_LINES} lines; split them:\n  "
        + "\n  ".join(offenders)
    )

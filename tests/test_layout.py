"""The tree's layout rules: no class over 300 lines (issue 9), anywhere in the project's Python.

A class that grows past this has taken on a second responsibility (STYLE.md: split at a
second responsibility); split it into parts it composes, never over two files by
inheritance. Lines are counted as the AST does, from the ``class`` line to its last line
(``end_lineno - lineno + 1``), nested classes included on their own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

MAX_CLASS_LINES = 300
ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("lockless", "sim", "tests", "notebooks")


def long_classes(paths: Iterable[Path], limit: int = MAX_CLASS_LINES) -> list[str]:
    """``"<path>:<line> <Class> is <n> lines"`` for every class in ``paths`` longer than ``limit``."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path}:{node.lineno} {node.name} is {lines} lines")
    return found


def python_files(root: Path, folders: Iterable[str] = CHECKED) -> list[Path]:
    """Every ``.py`` file under ``root``'s ``folders``."""
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def assert_no_long_classes(root: Path) -> None:
    """Fail naming every class over :data:`MAX_CLASS_LINES` in the checked folders of ``root``."""
    files = python_files(root)
    assert files, f"no Python files under {root}"
    offenders = long_classes(files)
    assert offenders == [], f"classes over {MAX_CLASS_LINES} lines (split by responsibility): {offenders}"


def test_no_class_is_over_300_lines() -> None:
    assert_no_long_classes(ROOT)


def _class_of(lines: int, name: str) -> str:
    """Source of a class that is exactly ``lines`` lines long."""
    body = [f"    x{i} = {i}" for i in range(lines - 1)]
    return "\n".join([f"class {name}:", *body]) + "\n"


def test_the_rule_catches_a_long_class(tmp_path: Path) -> None:
    # A tree shaped like the project's, with one class of 301 lines (nested in another, which
    # is then over the limit too) and one of exactly 300: only the long ones are named.
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "ok.py").write_text(_class_of(MAX_CLASS_LINES, "Fits"))
    nested = "class Outer:\n" + "".join(f"    {line}\n" for line in _class_of(301, "Inner").splitlines())
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "big.py").write_text(nested)
    for folder in ("lockless", "notebooks"):
        (tmp_path / folder).mkdir()

    with pytest.raises(AssertionError, match="classes over 300 lines") as failure:
        assert_no_long_classes(tmp_path)
    message = str(failure.value)
    assert "big.py:1 Outer is 302 lines" in message and "big.py:2 Inner is 301 lines" in message
    assert "Fits" not in message
    (tmp_path / "tests" / "big.py").unlink()
    assert_no_long_classes(tmp_path)  # the class of exactly 300 lines is allowed

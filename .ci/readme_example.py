"""The README's library example, taken from the README itself and run against a real server.

Run as a script, in a process of its own, as a user would::

    python .ci/readme_example.py redis://127.0.0.1:6379/0

by ``tests/test_readme_example.py`` (the suite's environment, whatever versions it has) and
by ``.ci/lowest`` in a fresh environment that has ``lockless`` installed with the lowest
redis-py ``pyproject.toml`` allows and nothing else (no harness, no pytest). So it imports
only the standard library, ``lockless`` and redis-py, and lives outside ``tests/``: run by path, a
script's folder comes first on ``sys.path``, and ``tests/redis`` would shadow redis-py. The example is run as
written; only its placeholder URL is swapped for the server's, so an edit to the README
that breaks the example fails here.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import redis

import lockless

README = Path(__file__).resolve().parent.parent / "README.md"  # .ci/ is one level down
SECTION = "## Using the library"


def library_example(readme: Path = README) -> str:
    """The first ```python block of the README's "Using the library" section."""
    text = readme.read_text(encoding="utf-8")
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"{readme}: no {SECTION!r} section")
    block = re.search(r"```python\n(.*?)```", text[start:], flags=re.DOTALL)
    if block is None:
        raise ValueError(f"{readme}: no ```python block in {SECTION!r}")
    return block.group(1)


def with_url(code: str, url: str) -> str:
    """``code`` with its one ``"url": "..."`` setting pointed at ``url``."""
    urls = re.findall(r'"url": "([^"]+)"', code)
    if len(urls) != 1:
        raise ValueError(f'the example should set exactly one "url", found {urls}')
    return code.replace(f'"url": "{urls[0]}"', f'"url": "{url}"')


async def run_example(url: str, readme: Path = README) -> dict[str, Any]:
    """Run the README's example against ``url``; returns the names it bound (``placement``...)."""
    code = compile(with_url(library_example(readme), url), str(readme), "exec",
                   flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    names: dict[str, Any] = {"__name__": "readme_example"}
    # Top-level ``async with``/``await`` compile to a coroutine when the flag above is given.
    pending = eval(code, names)
    if pending is not None:
        await pending
    return names


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} REDIS_URL", file=sys.stderr)
        return 2
    names = asyncio.run(run_example(argv[1]))
    placement = names["placement"]
    if placement.node_id != "n1":
        print(f"the example placed job-1 on {placement.node_id!r}, expected 'n1'", file=sys.stderr)
        return 1
    print(f"README example ran: job-1 placed on {placement.node_id} "
          f"(lockless from {Path(lockless.__file__).parent}, redis-py {redis.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

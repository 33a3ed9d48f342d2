"""The README's library example runs as written (``.ci/readme_example.py``), in a process of its own.

CI runs this file with the newest dependencies and again with the lowest ones
(``.ci/lowest``), which also runs the script in an environment holding the library alone.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.redis_server import RedisServer, ServerBinary

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "readme_example.py"


@pytest.fixture
def own_server(server_binary: ServerBinary) -> Iterator[RedisServer]:
    # A server of its own: the example uses the default key namespace, which no other test owns.
    server = RedisServer(server=server_binary)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_the_readme_library_example_places_a_job(own_server: RedisServer) -> None:
    done = _run(own_server.url)
    assert done.returncode == 0, done.stderr
    assert "job-1 placed on n1" in done.stdout


def test_a_server_that_is_not_there_fails_the_example(own_server: RedisServer) -> None:
    url = own_server.url
    own_server.stop()
    done = _run(url)
    assert done.returncode != 0
    assert "RedisUnavailable: cannot reach" in done.stderr

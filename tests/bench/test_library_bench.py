"""Opt-in smoke run of the library benchmark (``pytest -m benchmark tests/bench``).

The real run is ``python -m tests.bench.bench_library``; this one takes few samples on the
session's server, checks that every figure and the machine description are there, and
writes its JSON under pytest's tmp_path. It reports the targets and never asserts them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.bench_library import Plan, run, table


@pytest.mark.benchmark
async def test_library_benchmark_smoke(redis_url: str, tmp_path: Path) -> None:
    result, path = await run(
        url=redis_url, nodes=1_000, pools=10, flat_sizes=(1_000, 5_000), plan=Plan.quick(), out=tmp_path
    )
    assert path is not None and json.loads(path.read_text()) == result
    for op in (
        "get_node_l1_hit",
        "select_power_of_two",
        "select_least_loaded",
        "ping",
        "hgetall",
        "heartbeat_quiet",
        "job_start",
        "job_finish",
    ):
        stats = result["results"][op]
        assert stats["count"] > 0 and 0 < stats["p50_us"] <= stats["p99_us"] <= stats["max_us"], op
    assert set(result["flat_select"]) == {"1000", "5000"}
    assert result["machine"]["cpu"] and result["machine"]["redis_server"]
    assert result["counters"]["misses"] == 0 and result["counters"]["heartbeats_not_quiet"] == 0
    assert result["counters"]["job_starts_rejected"] == 0
    print(table(result))

"""The analysis notebook runs headlessly on real results, on none, and stays paired with its script.

``notebooks/locked_vs_lockless.ipynb`` is executed with nbclient (a real kernel) against
the session's shortened smoke run (``smoke_result``, tests/conftest.py), so a change to
the result layout that breaks the notebook fails CI instead of rotting unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
NOTEBOOK = NOTEBOOKS / "locked_vs_lockless.ipynb"
SCRIPT = NOTEBOOKS / "locked_vs_lockless.py"


def _execute(results: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits the environment: LOCKLESS_RESULTS is how the notebook is pointed.
    old = os.environ.get("LOCKLESS_RESULTS")
    os.environ["LOCKLESS_RESULTS"] = str(results)
    try:
        NotebookClient(
            nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
    finally:
        if old is None:
            os.environ.pop("LOCKLESS_RESULTS", None)
        else:
            os.environ["LOCKLESS_RESULTS"] = old
    return nb


def _outputs(nb: nbformat.NotebookNode) -> Iterator[dict]:
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for out in _outputs(nb):
        data = out.get("data", {})
        parts.append(out.get("text", "") + data.get("text/markdown", "") + data.get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_renders_every_section_from_a_smoke_run(smoke_result: Path) -> None:
    nb = _execute(smoke_result)
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, errors
    images = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    # CDFs, latency over time (smoke has a pub/sub kill), propagation, scaling, cost vs freshness.
    assert len(images) == 5
    text = _text(nb)
    assert "Read **1** experiment(s)" in text
    assert "p99 ms" in text and "place" in text and "locked" in text and "redis-select" in text
    assert "max of" in text  # a 5 s smoke run has too few samples for its P99s
    assert "normal->l2_only" in text  # the mode switches of the pub/sub kill, listed under the plot
    assert "raw PING P50" in text  # the probe section
    assert "P50 x lockless [95%]" in text  # the baselines table, from smoke when no baselines run
    assert "Skipped: no knee sweep" in text and "Skipped: no contention run" in text


def _many_results(root: Path, kind: str) -> None:
    """A sweep or contention result folder written by the real writer from made-up steps."""
    from sim.config import from_mapping
    from sim.sweep import ManyOutcome, Step, judge
    from sim.sweep_report import write_many

    extra = (
        {"sweep": {"rates_per_s": [1.0, 2.0, 4.0], "p99_bound_ms": 10.0}}
        if kind == "sweep"
        else {"contention": {"instances": [1, 2], "policies": ["least_loaded", "power_of_two"]}}
    )
    config = from_mapping({"experiment": {"name": kind, "kind": kind}, **extra})
    outcome = ManyOutcome(config=config)
    for arch, slow in (("lockless", 1), ("locked", 40)):
        cells = (
            [({"rate_per_s": r, "arrival_rate_per_s": r}, r) for r in (1.0, 2.0, 4.0)]
            if kind == "sweep"
            else [
                ({"policy": p, "instances": n}, n) for p in ("least_loaded", "power_of_two") for n in (1, 2)
            ]
        )
        for params, x in cells:
            us = int(1000 * slow * x)
            step = Step(
                arch=arch,
                label=str(params),
                params=params,
                valid=True,
                invalid_reason="",
                lag_p99_ms=1.0,
                place={
                    "count": 1500,
                    "p50_us": us,
                    "p95_us": 2 * us,
                    "p99_us": 3 * us,
                    "p99.9_us": 4 * us,
                    "max_us": 5 * us,
                    "undersampled": ["p99.9"],
                },
                place_hdr="",
                counters={"placed": 1500, "conflicts": int(10 * x)},
                errors=0,
                commands={},
                utilization=0.85,
                data_age_p50_ms=1.0,
                achieved_per_s=x,
            )
            if kind == "sweep":
                judge(step, config)
            outcome.steps.append(step)
    write_many(outcome, root)


def test_notebook_draws_knees_and_conflicts_from_sweep_and_contention_results(tmp_path: Path) -> None:
    _many_results(tmp_path, "sweep")
    _many_results(tmp_path, "contention")
    nb = _execute(tmp_path)
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    images = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the knee plot and the conflicts plot; comparison sections skip
    text = _text(nb)
    assert "stopped at /s" in text and "conflicts / pl." in text


def test_notebook_says_so_when_there_are_no_results(tmp_path: Path) -> None:
    nb = _execute(tmp_path / "empty")
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert "No result folders found" in _text(nb)
    assert not [o for o in _outputs(nb) if "image/png" in o.get("data", {})]


def test_notebook_and_script_are_paired_and_the_notebook_has_no_outputs() -> None:
    nb = jupytext.read(NOTEBOOK)
    script = jupytext.read(SCRIPT)
    assert [c.source for c in nb.cells] == [c.source for c in script.cells], (
        f"out of sync: run `jupytext --sync {SCRIPT}`"
    )
    assert all(
        not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"
    )
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"

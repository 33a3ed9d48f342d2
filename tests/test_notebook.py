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
    # CDFs, latency over time (smoke has a pub/sub kill), propagation, scaling.
    assert len(images) == 4
    text = _text(nb)
    assert "Read **1** experiment(s)" in text
    assert "p99 ms" in text and "select" in text and "locked" in text
    assert "normal->l2_only" in text  # the mode switches of the pub/sub kill, listed under the plot
    assert "raw PING P50" in text  # the probe section


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

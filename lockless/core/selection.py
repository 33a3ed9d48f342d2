"""Placement selection over a pool index: filter, pick by policy, explain the rest.

Pure and seeded: given the same index, requirements and ``random.Random`` state, the
same picks come out, so tests and simulations replay exactly.

Cost. Selection must stay flat as pools grow (DESIGN.md section 6: P99 under 50 us
from 1,000 to 100,000 nodes), so it never scans a pool on the common path:

* The pool index keeps its *placeable* nodes (``up`` with a free slot) in a sorted
  list keyed by ``(utilisation, load, node_id)``. Least-loaded reads its head;
  power-of-two-choices samples two random positions and keeps the less loaded one,
  which spreads instances reading the same cache instead of piling all of them onto
  the single least-loaded node.
* Requirements are checked on the sampled candidates only. When sampling does not find
  enough fits (the requirement is rare, or the pool is nearly full) selection falls
  back to one scan of the placeable nodes, which also yields the exact breakdown of
  why the others were filtered, the answer a user needs when nothing fits
  ("0 of 1,000 fit: 700 full, 250 missing label gpu, 50 draining").
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from lockless.core.snapshot import NO_REQUIREMENTS, NodeSnapshot, Requirements
from lockless.errors import ConfigError

POLICIES = ("power_of_two", "least_loaded")

#: Extra random candidates tried before falling back to a scan.
_SAMPLE_SLACK = 16


def placement_key(node: NodeSnapshot) -> tuple[float, float, str]:
    """Order of the placeable index: least utilised first, then least loaded, then by id."""
    return (node.utilisation, node.load, node.node_id)


def is_placeable(node: NodeSnapshot) -> bool:
    """An ``up`` node with at least one free slot."""
    return node.status == "up" and node.current_jobs < node.max_jobs


class PoolView(Protocol):
    """What selection reads from a pool index (``lockless.core.l1.PoolIndex``)."""

    @property
    def nodes(self) -> Mapping[str, NodeSnapshot]: ...

    @property
    def placeable(self) -> Sequence[tuple[float, float, str]]: ...

    @property
    def draining(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Picked nodes, and why the other candidates were not picked."""

    pool: str
    picks: tuple[NodeSnapshot, ...]
    #: Nodes in the pool when the selection ran.
    considered: int
    #: Reason -> number of nodes filtered for it (``full``, ``draining``, ``missing label x``, ...).
    filtered: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    policy: str = "power_of_two"
    #: True when every placeable node was checked, so ``filtered`` is exact for requirements too.
    exhaustive: bool = False

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(n.node_id for n in self.picks)

    def explain(self) -> str:
        """One line in the style of kube-scheduler: ``0 of 1,000 fit: 700 full, 300 draining``."""
        parts = [f"{n:,} {reason}" for reason, n in sorted(self.filtered.items(), key=lambda kv: -kv[1])]
        head = f"{len(self.picks)} of {self.considered:,} picked in pool {self.pool!r}"
        if not parts:
            return head
        tail = ", ".join(parts) + ("" if self.exhaustive else " (requirements checked on a sample)")
        return f"{head}; filtered: {tail}"


def unmet(node: NodeSnapshot, req: Requirements) -> str | None:
    """The first requirement ``node`` fails, as a reason string, or None if it fits."""
    if req.labels and not req.labels <= node.labels:
        return f"missing label {min(req.labels - node.labels)}"
    for name, amount in req.resources.items():
        if node.resources.get(name, 0.0) < amount:
            return f"short of {name}"
    return None


def select(
    view: PoolView,
    *,
    pool: str,
    count: int = 1,
    requirements: Requirements | None = None,
    policy: str = "power_of_two",
    rng: random.Random,
) -> Selection:
    """Pick up to ``count`` distinct placeable nodes of ``view`` that meet ``requirements``."""
    if policy not in POLICIES:
        raise ConfigError("policy", policy, " | ".join(POLICIES))
    if not isinstance(count, int) or count < 1:
        raise ConfigError("count", count, "an integer >= 1")
    req = requirements or NO_REQUIREMENTS
    nodes, placeable = view.nodes, view.placeable
    base: dict[str, int] = {}
    full = len(nodes) - len(placeable) - view.draining
    if full:
        base["full"] = full
    if view.draining:
        base["draining"] = view.draining
    unconstrained = not req.labels and not req.resources

    if policy == "least_loaded":
        picks, misfits, exhaustive = _least_loaded(nodes, placeable, count, req, unconstrained)
    else:
        picks, misfits, exhaustive = _power_of_two(nodes, placeable, count, req, unconstrained, rng)
    for reason, n in misfits.items():
        base[reason] = base.get(reason, 0) + n
    return Selection(
        pool=pool,
        picks=tuple(picks),
        considered=len(nodes),
        filtered=MappingProxyType(base),
        policy=policy,
        exhaustive=exhaustive or unconstrained,
    )


def _least_loaded(nodes, placeable, count, req, unconstrained):
    if unconstrained:
        return [nodes[key[2]] for key in placeable[:count]], {}, True
    picks: list[NodeSnapshot] = []
    misfits: dict[str, int] = {}
    for key in placeable:
        node = nodes[key[2]]
        reason = unmet(node, req)
        if reason is None:
            picks.append(node)
            if len(picks) == count:
                return picks, misfits, False
        else:
            misfits[reason] = misfits.get(reason, 0) + 1
    return picks, misfits, True


def _power_of_two(nodes, placeable, count, req, unconstrained, rng):
    size = len(placeable)
    if size <= count * 2:
        return _scan_and_choose(nodes, placeable, count, req, rng)
    chosen: set[str] = set()
    picks: list[NodeSnapshot] = []
    budget = 2 * count + _SAMPLE_SLACK
    while len(picks) < count and budget > 0:
        pair = []
        while len(pair) < 2 and budget > 0:
            budget -= 1
            key = placeable[rng.randrange(size)]
            if key[2] in chosen:
                continue
            node = nodes[key[2]]
            if unconstrained or unmet(node, req) is None:
                pair.append((key, node))
        if len(pair) == 2 and pair[0][0][2] == pair[1][0][2]:
            pair.pop()
        if pair:
            _, best = min(pair, key=lambda kn: kn[0])
            chosen.add(best.node_id)
            picks.append(best)
    if len(picks) == count:
        return picks, {}, False
    return _scan_and_choose(nodes, placeable, count, req, rng)


def _scan_and_choose(nodes, placeable, count, req, rng):
    """Exhaustive path: every placeable node checked, then two-choices among the fits."""
    fits: list[tuple[tuple[float, float, str], NodeSnapshot]] = []
    misfits: dict[str, int] = {}
    for key in placeable:
        node = nodes[key[2]]
        reason = unmet(node, req)
        if reason is None:
            fits.append((key, node))
        else:
            misfits[reason] = misfits.get(reason, 0) + 1
    picks: list[NodeSnapshot] = []
    while fits and len(picks) < count:
        if len(fits) == 1:
            i = 0
        else:
            a, b = rng.sample(range(len(fits)), 2)
            i = a if fits[a][0] <= fits[b][0] else b
        picks.append(fits.pop(i)[1])
    return picks, misfits, True

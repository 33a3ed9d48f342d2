"""The nodes' lives: heartbeats with jitter, crashes, graceful leaves and rejoins.

A node heartbeats every ``heartbeat_interval_s`` spread by +- ``heartbeat_jitter``,
starting at a uniform offset so that a cluster registered in one go does not heartbeat in
lockstep. Crash and leave are Poisson (exponential waits); either is followed, after an
exponential ``rejoin_after_s``, by a register, which keeps the population steady over a
long run. A node that is down does not heartbeat.

Why not one SimPy process per node, as the jobs and faults are: at 100,000 nodes that is
20,000 process resumptions a second (a ``Timeout`` event, its callbacks, a generator
step), about 10 us of harness CPU each, a third of what a heartbeat may cost end to end.
A node's life needs none of SimPy's machinery: it is a sequence of instants, each fixed by
the one before and the seeded draws. :class:`NodeLives` keeps every node's next instant
and takes them in time order, which is what SimPy's event queue does for these processes,
without the events. One heap of 100,000 instants
costs ~6 us per beat on the reference VM (17 levels of tuples scattered in memory), so the
instants wait in a timing wheel of :data:`BUCKET_S` buckets, and only the bucket being
worked through is a (small) heap.

Determinism: all draws come from the one ``random.Random`` given to :class:`NodeLives`,
in the order the instants are popped; the heap yields them in the same order however the
run is cut into windows, so the same seed gives the same plan.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable

from sim.model.ops import Cluster, Kind, Op

Emit = Callable[[Op], None]

# What a node's next instant is.
_BEAT, _FAIL, _REJOIN = 0, 1, 2

#: Width of a timing-wheel bucket (simulated s): a few hundred instants at 100,000 nodes.
BUCKET_S = 0.01


def _next_failure(rng: random.Random, rate_per_s: float) -> float:
    return rng.expovariate(rate_per_s) if rate_per_s > 0 else math.inf


class NodeLives:
    """Every node of one shard, as each node's next instant in a timing wheel.

    :meth:`advance` takes the instants before ``until`` in time order: heartbeats go into
    three parallel lists (intended time, node index, reported load or -1 for a quiet
    beat), which the dispatcher sends without building an :class:`Op` per beat; crashes,
    leaves and rejoins are :class:`Op` records for ``emit``.
    """

    def __init__(self, cluster: Cluster, rng: random.Random, *, start: float = 0.0) -> None:
        cfg = cluster.config.nodes
        self.cluster = cluster
        self._rng = rng
        self._interval, self._jitter = cfg.heartbeat_interval_s, cfg.heartbeat_jitter
        self._crash_rate = cfg.crash_rate_per_hour / 3600
        self._leave_rate = cfg.leave_rate_per_hour / 3600
        self._rejoin_mean = cfg.rejoin_after_s
        self._load_p = cfg.load_change_probability
        # Per node: next crash and next leave (inf without churn).
        self._crash_at: dict[int, float] = {}
        self._leave_at: dict[int, float] = {}
        # The wheel: bucket number -> instants (t, node, what); the bucket being worked
        # through (and anything that falls into it meanwhile) is the heap. A node has one
        # pending instant, so (t, node) orders ties the same way every run.
        self._buckets: dict[int, list[tuple[float, int, int]]] = {}
        self._bucket = int(start / BUCKET_S) - 1
        self._heap: list[tuple[float, int, int]] = []
        for idx in cluster.node_indexes:
            # Registered before the clock started; the first beat comes within the first interval.
            self._crash_at[idx] = start + _next_failure(rng, self._crash_rate)
            self._leave_at[idx] = start + _next_failure(rng, self._leave_rate)
            self._next(idx, start + rng.uniform(0, self._interval))

    def _push(self, t: float, idx: int, what: int) -> None:
        entry = (t, idx, what)
        bucket = int(t / BUCKET_S)
        if bucket <= self._bucket:
            heapq.heappush(self._heap, entry)
        elif (waiting := self._buckets.get(bucket)) is not None:
            waiting.append(entry)
        else:
            self._buckets[bucket] = [entry]

    def _next(self, idx: int, beat_at: float) -> None:
        """Schedule the node's next instant: the beat at ``beat_at``, or a failure that comes first."""
        fail_at = min(self._crash_at[idx], self._leave_at[idx])
        if fail_at < beat_at:
            self._push(fail_at, idx, _FAIL)
        else:
            self._push(beat_at, idx, _BEAT)

    def _gap(self) -> float:
        return self._interval * (1.0 + self._jitter * self._rng.uniform(-1.0, 1.0))

    def advance(
        self, until: float, emit: Emit, times: list[float], nodes: list[int], loads: list[float]
    ) -> None:
        """Take every instant before ``until``: beats appended to the three lists, life events emitted."""
        heap, rng, load_p, buckets = self._heap, self._rng, self._load_p, self._buckets
        crash_at, leave_at = self._crash_at, self._leave_at
        interval, jitter, width = self._interval, self._jitter, BUCKET_S
        pop, push, uniform = heapq.heappop, heapq.heappush, rng.uniform
        last = int(until / width)
        while True:
            while heap and heap[0][0] < until:
                t, idx, what = pop(heap)
                if what == _BEAT:
                    # The hot path, inlined (_next, _push, _gap): 20,000 of these a second.
                    load = -1.0
                    if load_p and rng.random() < load_p:
                        load = round(rng.random(), 3)
                    times.append(t)
                    nodes.append(idx)
                    loads.append(load)
                    beat_at = t + interval * (1.0 + jitter * uniform(-1.0, 1.0))
                    fail_at = crash_at[idx]
                    if leave_at[idx] < fail_at:
                        fail_at = leave_at[idx]
                    entry = (fail_at, idx, _FAIL) if fail_at < beat_at else (beat_at, idx, _BEAT)
                    bucket = int(entry[0] / width)
                    if bucket <= self._bucket:
                        push(heap, entry)
                    elif (waiting := buckets.get(bucket)) is not None:
                        waiting.append(entry)
                    else:
                        buckets[bucket] = [entry]
                elif what == _FAIL:
                    crashed = crash_at[idx] <= leave_at[idx]
                    emit(Op(t, Kind.CRASH if crashed else Kind.LEAVE, idx, self.cluster.instance_of(idx)))
                    self._push(t + rng.expovariate(1.0 / self._rejoin_mean), idx, _REJOIN)
                else:
                    emit(Op(t, Kind.REGISTER, idx, self.cluster.instance_of(idx)))
                    crash_at[idx] = t + _next_failure(rng, self._crash_rate)
                    leave_at[idx] = t + _next_failure(rng, self._leave_rate)
                    self._next(idx, t + self._gap())
            if self._bucket >= last:
                return
            # Every instant of the bucket is taken (they all fall before `until`): open the next.
            self._bucket += 1
            heap[:] = buckets.pop(self._bucket, ())
            heapq.heapify(heap)

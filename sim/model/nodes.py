"""The nodes' lives: heartbeats with jitter, crashes, graceful leaves and rejoins.

A node heartbeats every ``heartbeat_interval_s`` spread by +- ``heartbeat_jitter``,
starting at a uniform offset so that a cluster registered in one go does not heartbeat in
lockstep. Crash and leave are Poisson (exponential waits); either is followed, after an
exponential ``rejoin_after_s``, by a register, which keeps the population steady over a
long run. A node that is down does not heartbeat.

Why not one SimPy process per node, as the jobs and faults are: at 100,000 nodes that is
20,000 process resumptions a second (a ``Timeout`` event, its callbacks, a generator
step), about 10 us of harness CPU each, a third of what a heartbeat may cost end to end;
a heap of every node's next instant still costs ~6 us a beat (17 levels of tuples
scattered in memory). A node's life needs none of that: it is a sequence of instants,
each fixed by the one before and a few random draws. :class:`NodeLives` holds every
node's next instant in arrays and takes the due ones a window at a time, with numpy.

Randomness is counter-based: every draw is a hash of (seed, what it is for, node, the
node's own count of such draws) (:func:`uniform`, SplitMix64's finaliser). A node's whole
life therefore depends on the seed and its index alone: not on the other nodes, not on how
the run is cut into windows, not on how nodes are split into shards. The same seed gives
the same plan, and a window of any length gives the same beats.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from sim.model.ops import Cluster, Kind, Op

Emit = Callable[[Op], None]

# What a node's next instant is.
_BEAT, _FAIL, _REJOIN = 0, 1, 2
# What a draw is for (one stream each).
_FIRST, _GAP, _LOAD_P, _LOAD_V, _CRASH, _LEAVE, _REJOIN_WAIT, _REJOIN_GAP = range(8)

_M64 = (1 << 64) - 1
_K_NODE, _K_COUNT, _K_STREAM = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_F1, _F2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U64 = np.uint64


def seed_key(seed: str) -> int:
    """A 64-bit key from the experiment's seed text."""
    return int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "little")


def uniform(key: int, stream: int, node: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1), one per (node, count): SplitMix64's finaliser of the mixed inputs."""
    with np.errstate(over="ignore"):
        x = (
            _U64(key)
            ^ (node.astype(_U64) * _U64(_K_NODE))
            ^ (count.astype(_U64) * _U64(_K_COUNT))
            ^ _U64((stream * _K_STREAM) & _M64)
        )
        x = (x ^ (x >> _U64(30))) * _U64(_F1)
        x = (x ^ (x >> _U64(27))) * _U64(_F2)
        x ^= x >> _U64(31)
    return (x >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform1(key: int, stream: int, node: int, count: int) -> float:
    """:func:`uniform` for one draw, in plain integers (the rare events): the same value."""
    x = key ^ ((node * _K_NODE) & _M64) ^ ((count * _K_COUNT) & _M64) ^ ((stream * _K_STREAM) & _M64)
    x = ((x ^ (x >> 30)) * _F1) & _M64
    x = ((x ^ (x >> 27)) * _F2) & _M64
    x ^= x >> 31
    return (x >> 11) * (1.0 / (1 << 53))


class NodeLives:
    """Every node of one shard: its next instant (a beat, a failure, a rejoin), in arrays.

    :meth:`advance` takes the instants before ``until``: heartbeats go into three parallel
    lists (intended time, node index, reported load or -1 for a quiet beat), in time
    order, which the dispatcher sends without building an :class:`Op` per beat; crashes,
    leaves and rejoins are :class:`Op` records for ``emit``, in time order.
    """

    def __init__(self, cluster: Cluster, seed: str, *, start: float = 0.0) -> None:
        cfg = cluster.config.nodes
        self.cluster = cluster
        self._key = seed_key(seed)
        self._interval, self._jitter = cfg.heartbeat_interval_s, cfg.heartbeat_jitter
        self._crash_rate = cfg.crash_rate_per_hour / 3600
        self._leave_rate = cfg.leave_rate_per_hour / 3600
        self._rejoin_mean = cfg.rejoin_after_s
        self._load_p = cfg.load_change_probability
        self.nodes = np.fromiter(cluster.node_indexes, dtype=np.int64)
        n = len(self.nodes)
        # Per node: beats drawn (the counter of the gap and load draws), lives begun.
        self._beats = np.zeros(n, dtype=np.int64)
        self._lives = np.zeros(n, dtype=np.int64)
        self._crash_at = start + self._failure(_CRASH, self._crash_rate, self.nodes, self._lives)
        self._leave_at = start + self._failure(_LEAVE, self._leave_rate, self.nodes, self._lives)
        # Registered before the clock started; the first beat comes within the first interval.
        first = start + uniform(self._key, _FIRST, self.nodes, self._lives) * self._interval
        fail_at = np.minimum(self._crash_at, self._leave_at)
        self._at = np.minimum(first, fail_at)
        self._what = np.where(fail_at < first, _FAIL, _BEAT).astype(np.int8)

    def _failure(self, stream: int, rate: float, nodes: np.ndarray, lives: np.ndarray) -> np.ndarray:
        if rate <= 0:
            return np.full(len(nodes), math.inf)
        return -np.log1p(-uniform(self._key, stream, nodes, lives)) / rate

    def _gap(self, stream: int, node: np.ndarray, count: np.ndarray) -> np.ndarray:
        return self._interval * (1.0 + self._jitter * (2.0 * uniform(self._key, stream, node, count) - 1.0))

    def up(self) -> list[int]:
        """The nodes that are not down (crashed or left, not yet rejoined) now."""
        return self.nodes[self._what != _REJOIN].tolist()

    @property
    def next_time(self) -> float:
        """When the next instant falls (inf if none)."""
        return float(self._at.min()) if len(self._at) else math.inf

    def advance(
        self, until: float, emit: Emit, times: list[float], nodes: list[int], loads: list[float]
    ) -> None:
        """Take every instant before ``until``: beats appended to the three lists, life events emitted."""
        beat_t: list[np.ndarray] = []
        beat_node: list[np.ndarray] = []
        beat_load: list[np.ndarray] = []
        life: list[Op] = []
        while True:
            due = np.flatnonzero(self._at < until)
            if not due.size:
                break
            is_beat = self._what[due] == _BEAT  # taken before either kind reschedules its nodes
            beating, living = due[is_beat], due[~is_beat]
            soonest = math.inf
            if beating.size:
                soonest = self._beat(beating, beat_t, beat_node, beat_load)
            for pos in living.tolist():
                life.append(self._life_event(pos))
            if not living.size and soonest >= until:
                break  # the usual window: nothing it rescheduled falls inside it, no second scan
        if beat_t:
            t, node, load = np.concatenate(beat_t), np.concatenate(beat_node), np.concatenate(beat_load)
            order = np.lexsort((node, t))
            times += t[order].tolist()
            nodes += node[order].tolist()
            loads += load[order].tolist()
        for op in sorted(life, key=lambda o: (o.t, o.idx)):
            emit(op)

    def _beat(
        self,
        pos: np.ndarray,
        beat_t: list[np.ndarray],
        beat_node: list[np.ndarray],
        beat_load: list[np.ndarray],
    ) -> float:
        """The due beats at positions ``pos``: record them and schedule each node's next instant
        (the soonest of which is returned)."""
        t, node = self._at[pos], self.nodes[pos]
        count = self._beats[pos] + 1
        self._beats[pos] = count
        load = np.full(pos.size, -1.0)
        if self._load_p:
            moved = uniform(self._key, _LOAD_P, node, count) < self._load_p
            load[moved] = np.round(uniform(self._key, _LOAD_V, node[moved], count[moved]), 3)
        beat_t.append(t)
        beat_node.append(node)
        beat_load.append(load)
        next_beat = t + self._gap(_GAP, node, count)
        fail_at = np.minimum(self._crash_at[pos], self._leave_at[pos])
        failing = fail_at < next_beat
        at = np.where(failing, fail_at, next_beat)
        self._at[pos] = at
        self._what[pos] = np.where(failing, _FAIL, _BEAT)
        return float(at.min())

    def _life_event(self, pos: int) -> Op:
        """A failure or a rejoin of the node at ``pos`` (rare: one at a time)."""
        t, node, key = float(self._at[pos]), int(self.nodes[pos]), self._key
        instance = self.cluster.instance_of(node)
        life = int(self._lives[pos])
        if self._what[pos] == _FAIL:
            crashed = self._crash_at[pos] <= self._leave_at[pos]
            wait = -math.log1p(-uniform1(key, _REJOIN_WAIT, node, life)) * self._rejoin_mean
            self._at[pos], self._what[pos] = t + wait, _REJOIN
            return Op(t, Kind.CRASH if crashed else Kind.LEAVE, node, instance)
        life += 1
        self._lives[pos] = life
        failures = ((_CRASH, self._crash_rate, self._crash_at), (_LEAVE, self._leave_rate, self._leave_at))
        for stream, rate, at in failures:
            at[pos] = t - math.log1p(-uniform1(key, stream, node, life)) / rate if rate > 0 else math.inf
        gap = self._interval * (1.0 + self._jitter * (2.0 * uniform1(key, _REJOIN_GAP, node, life) - 1.0))
        fail_at = min(self._crash_at[pos], self._leave_at[pos])
        self._at[pos], self._what[pos] = (fail_at, _FAIL) if fail_at < t + gap else (t + gap, _BEAT)
        return Op(t, Kind.REGISTER, node, instance)

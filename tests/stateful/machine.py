"""A Hypothesis state machine: 2-3 LocklessRegistry instances, one real redis-server, faults, and a model.

Shape (after Hypothesis's ``DatabaseComparison``): every rule does one thing through a
randomly chosen instance and applies the same thing to :class:`RegistryModel`; the answer
the instance gives must be the answer the model predicts, because every write is decided
by a Lua script in Redis. Invariants run after every step; ``settle`` waits (with a
deadline) until every instance has caught up and then demands exact agreement.

Rules cannot be coroutines (HypothesisWorks/hypothesis#4107), so the machine owns an
``asyncio.Runner`` and each rule runs its coroutine on it with ``self.runner.run(...)``.
Between rules the loop does not run: the instances' background tasks (subscriber,
applier, health probe) advance only while a rule or an invariant is running, which is
also when the test looks at them.

Faults, all against the machine's own server (never the session's shared one):

* ``lose_events``: ``CLIENT KILL TYPE pubsub``, then writes published while the
  subscriptions are down (lost), optionally with the pool logs trimmed to nothing
  (``XTRIM MAXLEN 0``) so that catch-up must relist;
* ``silent_writes``: writes whose PUBLISH reaches nobody while every subscription stays
  up (only the health probe can notice);
* ``publish_garbage``: an undecodable event on a pool channel;
* ``kill_command_connections``: ``CLIENT KILL TYPE normal`` (pooled connections die idle);
* ``restart_server``: restart with or without data while the loop is idle (redis-py
  reconnects silently; scripts are gone; an empty restart changes every epoch);
* ``outage``: the server stopped while the loop runs, one instance taken to LOCAL_ONLY,
  writes journaled there, then the server started again (empty or with its data) and
  the journal replayed;
* ``pause_server``: SIGSTOP for a while with reads running (they must keep answering
  from L1 within a bound), then SIGCONT in the same rule.

Liveness without sleeping: ``lapse`` writes a node's ``alive`` score an hour into the
past (server time), so ``job_start`` refuses it and ``reap`` removes it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lockless.config import (
    CacheConfig,
    NodeLifecycleConfig,
    RedisConfig,
    RegistryConfig,
    SubscriberConfig,
)
from lockless.core.modes import Mode, ModeThresholds
from lockless.core.selection import is_placeable, unmet
from lockless.core.snapshot import NodeSnapshot, NodeSpec, Requirements
from lockless.protocol import Heartbeat
from lockless.redis.keys import KeySpace
from lockless.redis.store import RedisStore
from lockless.registry import LocklessRegistry
from sim.redis_server import RedisServer
from tests.stateful.model import RegistryModel, records_of, snapshot_record
from tests.support import version_in

POOLS = ("p", "q")
NODE_IDS = ("n0", "n1", "n2")
JOB_IDS = ("j0", "j1", "j2", "j3")
# Loads whose pairwise differences are never near the tolerance (0.1): quiet or not is unambiguous.
LOADS = (0.0, 0.05, 0.3, 0.6, 0.9)
LABELS = ("m1", "m2")
LOAD_TOLERANCE = 0.1
#: Long enough that no node dies of old age during a run: only ``lapse`` makes a node dead.
DEAD_AFTER_S = 600.0
#: How long ``settle`` and the fault rules wait for the instances before failing.
CONVERGE_S = 15.0
#: A read during a pause must answer within this (the L2_ONLY version-check budget is 50 ms).
PAUSED_READ_BOUND_S = 0.3

#: An instance that caught up through the pool log has not learned the pool's epoch until
#: its next probe; if Redis loses its data in that window, it keeps the old records forever
#: (``test_regressions.py::test_data_loss_is_noticed_after_a_log_catch_up``). While that bug
#: stands, data-loss faults wait for the epochs to be learned first; set False to hunt it here.
WORK_AROUND_EPOCH_BUG = True

#: Totals over every example of a run, printed by the test (how many steps, which faults).
TALLY: Counter[str] = Counter()


# ============================================================================ ops
@dataclass(frozen=True)
class SpecArgs:
    """What a node declares; ``build`` makes the NodeSpec (max_jobs raised to the jobs it runs)."""

    max_jobs: int
    status: str
    load: float
    cpu: int
    labels: tuple[str, ...]

    def build(self, pool: str, node_id: str, *, at_least: int = 0) -> NodeSpec:
        return NodeSpec(
            node_id=node_id,
            pool=pool,
            # Re-registering below the jobs a node runs would leave it over max_jobs by
            # design, not by a race; the capacity invariant is about admission, so keep it out.
            max_jobs=max(self.max_jobs, at_least),
            status=self.status,
            load=self.load,
            resources={"cpu": float(self.cpu)},
            labels=frozenset(self.labels),
        )


@dataclass(frozen=True)
class Register:
    inst: int
    pool: str
    node: str
    spec: SpecArgs


@dataclass(frozen=True)
class Beat:
    inst: int
    pool: str
    node: str
    load: float
    #: Job ids the node reports running (replacing its job set), or None.
    running: tuple[str, ...] | None = None
    #: Re-create the node with this if Redis does not know it.
    spec: SpecArgs | None = None


@dataclass(frozen=True)
class Remove:
    inst: int
    pool: str
    node: str


@dataclass(frozen=True)
class JobStart:
    inst: int
    pool: str
    node: str
    job: str


@dataclass(frozen=True)
class JobFinish:
    inst: int
    pool: str
    node: str
    job: str


Op = Register | Beat | Remove | JobStart | JobFinish

instances = st.integers(0, 2)
pools = st.sampled_from(POOLS)
node_ids = st.sampled_from(NODE_IDS)
job_ids = st.sampled_from(JOB_IDS)
loads = st.sampled_from(LOADS)
label_sets = st.lists(st.sampled_from(LABELS), unique=True, max_size=2).map(lambda xs: tuple(sorted(xs)))
spec_args = st.builds(
    SpecArgs,
    max_jobs=st.integers(0, 3),
    status=st.sampled_from(("up", "up", "draining")),
    load=loads,
    cpu=st.sampled_from((2, 4, 8)),
    labels=label_sets,
)
requirements = st.builds(
    lambda labels, cpu: Requirements(labels=frozenset(labels), resources={"cpu": cpu} if cpu else {}),
    label_sets.map(lambda xs: xs[:1]),
    st.sampled_from((0, 0, 4, 8)),
)
registers = st.builds(Register, instances, pools, node_ids, spec_args)
beats = st.builds(
    Beat,
    instances,
    pools,
    node_ids,
    loads,
    st.none() | st.lists(job_ids, unique=True, max_size=3).map(tuple),
    st.none() | spec_args,
)
quiet_beats = st.builds(Beat, instances, pools, node_ids, loads, st.none(), st.none() | spec_args)
removes = st.builds(Remove, instances, pools, node_ids)
job_starts = st.builds(JobStart, instances, pools, node_ids, job_ids)
job_finishes = st.builds(JobFinish, instances, pools, node_ids, job_ids)
write_ops = st.one_of(registers, beats, removes, job_starts, job_finishes)
#: Journaled writes: heartbeats carry no job ids (their coalescing would make the model guess).
#: Admissions come first: a local admission that Redis refuses on replay is the interesting case.
journal_ops = st.one_of(job_starts, registers, quiet_beats, job_finishes, removes)


def instance_config(url: str, ns: str, seed: int) -> RegistryConfig:
    """Short timeouts (faults are noticed in well under a second); no reaper task, no reap grace."""
    return RegistryConfig(
        pools=POOLS,
        redis=RedisConfig(
            url=url, namespace=ns, socket_timeout_s=0.25, connect_timeout_s=0.25, pool_timeout_s=0.25
        ),
        nodes=NodeLifecycleConfig(
            dead_after_s=DEAD_AFTER_S, ttl_s=6 * DEAD_AFTER_S, load_tolerance=LOAD_TOLERANCE, reap_grace_s=0.0
        ),
        cache=CacheConfig(seed=seed),
        subscriber=SubscriberConfig(
            ping_interval_s=0.1, pong_timeout_s=0.25, reconnect_base_s=0.02, reconnect_max_s=0.2
        ),
        modes=ModeThresholds(
            failures_to_local=2, probes_to_recover=2, probe_interval_s=0.05, probe_backoff_max_s=0.2
        ),
    )


class MuteKeys(KeySpace):
    """Key names whose event channels nobody subscribes to."""

    def events(self, pool: str) -> str:
        return f"{super().events(pool)}:nobody"


def mute_store(redis: RedisConfig, nodes: NodeLifecycleConfig) -> RedisStore:
    """Writes that reach Redis and its pool log, but PUBLISH on a channel nobody listens to."""
    return RedisStore(redis, nodes, keys=MuteKeys(redis.namespace))


@dataclass
class Truth:
    """One pool as Redis holds it, read after the caches were looked at."""

    seq: int
    epoch: str | None
    nodes: dict[str, NodeSnapshot]
    alive: set[str]
    node_keys: set[str]
    job_sets: dict[str, set[str]]


async def _until(condition: Callable[[], object], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what()}")
        await asyncio.sleep(0.005)  # lets the instances' tasks run; the deadline bounds the wait


def _await_chain(coro: Any) -> str:
    """Where a coroutine is suspended, outermost first (for diagnosing a hang)."""
    where = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where.append(
                f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
            )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(where)


async def _close(registry: LocklessRegistry) -> None:
    """``registry.close()``, working around a hang (see ``test_close.py``).

    On Python 3.11, ``asyncio.wait_for`` (used by redis-py to send a command) swallows a
    cancellation that arrives as the command is sent; ``close()`` cancels its health task
    once and then awaits it forever. Cancelling again until it returns keeps the
    state machine about consistency; the hang itself is pinned by ``test_close.py``.
    """
    closing = asyncio.ensure_future(registry.close())
    while True:
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if done:
            closing.result()
            return
        TALLY["bug:close_recancelled"] += 1
        for task in registry._tasks:
            task.cancel()


def logged(step: Callable[..., None]) -> Callable[..., None]:
    """Count the step, and on failure note every step of the example so far.

    Hypothesis prints the shrunk steps when a failure replays; a failure that depends on
    timing may not, so the steps that led to it travel with the exception as a note.
    """

    @functools.wraps(step)
    def run(self: RegistryMachine, **kwargs: Any) -> None:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        if step.__name__ != "consistent_with_redis":
            TALLY["steps"] += 1
            TALLY[f"rule:{step.__name__}"] += 1
            self.history.append(f"state.{step.__name__}({args})")
        try:
            step(self, **kwargs)
        except BaseException as exc:
            self.failed = True
            if not isinstance(exc, Exception):
                raise
            exc.add_note("steps of this example, up to the failure:\n  " + "\n  ".join(self.history))
            raise

    return run


# ======================================================================= machine
class RegistryMachine(RuleBasedStateMachine):
    """Several cache instances on one Redis, kept to a model, with faults."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server
        self.url = server.url
        self.runner = asyncio.Runner()
        self.ns = f"sm-{uuid.uuid4().hex[:10]}"
        self.model = RegistryModel(POOLS, LOAD_TOLERANCE)
        base = instance_config(server.url, self.ns, 0)
        # Truth reads retry a little more: they must survive the faults the rules inject.
        truth_redis = RedisConfig(url=server.url, namespace=self.ns, socket_timeout_s=2.0, retries=3)
        self.truth = RedisStore(truth_redis, base.nodes)
        #: A plain client for the machine's own raw commands (a cluster's machine: a cluster client).
        self.admin: Any = self.truth.client
        self.mute = mute_store(base.redis, base.nodes)
        self.instances: list[LocklessRegistry] = []
        #: (instance, pool) -> (epoch the instance knew, node -> highest version it has shown).
        self.seen: dict[tuple[int, str], tuple[str | None, dict[str, int]]] = {}
        #: Number of times Redis lost its data in this example.
        self.generation = 0
        self.jobs_placed = 0
        self.history: list[str] = []
        #: Set by a failing step: teardown then only cleans up.
        self.failed = False
        TALLY["examples"] += 1

    # ------------------------------------------------------------ plumbing
    def run(self, coro: Awaitable[Any]) -> Any:
        return self.runner.run(coro)  # type: ignore[arg-type]

    def inst(self, i: int) -> LocklessRegistry:
        return self.instances[i % len(self.instances)]

    def teardown(self) -> None:
        """Every example ends settled (unless a step already failed), then everything is closed."""
        try:
            if self.instances and not self.failed:
                self.history.append("(teardown) state.settle()")
                try:
                    self.run(self._settle())
                except Exception as exc:
                    exc.add_note("steps of this example, up to the failure:\n  " + "\n  ".join(self.history))
                    raise
        finally:
            self._close_all()

    def _revive(self) -> None:
        """Whatever a failed step left broken is running again, so that closing can talk to it."""
        self.server.resume()
        if not self.server.running:
            self.server.start()

    def _close_all(self) -> None:
        try:
            self._revive()

            async def close() -> None:
                for r in self.instances:
                    m = r.metrics()
                    for key in ("relists", "gaps", "catchups", "epoch_changes", "events_malformed"):
                        TALLY[f"metric:{key}"] += m[key]
                    for key in ("reconnects", "journal_replays", "version_checks", "stale_reads"):
                        TALLY[f"metric:{key}"] += m[key]
                    for (a, b), n in m.mode_switches.items():
                        TALLY[f"switch:{a}->{b}"] += n
                    await _close(r)
                await self.truth.close()
                await self.mute.close()

            self.run(close())
        finally:
            self.runner.close()

    async def _ready(self, registry: LocklessRegistry) -> None:
        """A write through ``registry`` must reach Redis now, not a journal: wait out LOCAL_ONLY."""
        if registry.mode is Mode.LOCAL_ONLY or registry.state().journal_depth:
            await _until(
                lambda: registry.mode is not Mode.LOCAL_ONLY and not registry.state().journal_depth,
                CONVERGE_S,
                lambda: (
                    f"{registry.instance} to leave LOCAL_ONLY ({registry.mode}, "
                    f"journal {registry.state().journal_depth})"
                ),
            )

    # ----------------------------------------------------------- writes
    async def _write(self, op: Op) -> None:
        """Run ``op`` through its instance and demand the answer the model predicts."""
        registry = self.inst(op.inst)
        await self._ready(registry)
        model = self.model
        if isinstance(op, Register):
            node = model.get(op.pool, op.node)
            spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
            version = await registry.register_node(spec)
            assert version == model.register(spec), f"{op}: version {version}"
        elif isinstance(op, Beat):
            node = model.get(op.pool, op.node)
            spec = op.spec.build(op.pool, op.node) if op.spec else None
            limit = node.max_jobs if node else (spec.max_jobs if spec else 0)
            running = None if op.running is None else op.running[:limit]
            got = await registry.heartbeat(op.pool, op.node, load=op.load, running_jobs=running, spec=spec)
            expected = model.heartbeat(op.pool, op.node, op.load, running, spec)
            assert not got.journaled, f"{op}: journaled outside an outage"
            assert (got.version, got.changed, got.recreated) == expected, f"{op}: {got} != {expected}"
        elif isinstance(op, Remove):
            existed = await registry.remove_node(op.pool, op.node)
            assert existed == bool(model.remove(op.pool, op.node)), f"{op}: existed={existed}"
        elif isinstance(op, JobStart):
            got = await registry.job_start(op.pool, op.node, op.job)
            want = model.job_start(op.pool, op.node, op.job)
            observed = (got.admitted, got.reason, got.version, got.current_jobs, got.max_jobs)
            expected = (want.admitted, want.reason, want.version, want.current_jobs, want.max_jobs)
            assert observed == expected, f"{op}: admission {observed} != model {expected}"
        elif isinstance(op, JobFinish):
            released = await registry.job_finish(op.pool, op.node, op.job)
            assert released == model.job_finish(op.pool, op.node, op.job)[0], f"{op}: released={released}"
        else:  # pragma: no cover
            raise AssertionError(op)

    async def _write_unheard(self, op: Op) -> None:
        """Run ``op`` through :func:`mute_store`'s store (same semantics, nobody hears the event)."""
        store, model = self.mute, self.model
        if isinstance(op, Register):
            node = model.get(op.pool, op.node)
            spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
            assert await store.register(spec) == model.register(spec)
        elif isinstance(op, Beat):
            spec = op.spec.build(op.pool, op.node) if op.spec else None
            got = await store.heartbeat(Heartbeat(pool=op.pool, node_id=op.node, load=op.load, spec=spec))
            expected = model.heartbeat(op.pool, op.node, op.load, None, spec)
            assert (got.version, got.changed, got.recreated) == expected
        elif isinstance(op, Remove):
            assert await store.remove(op.pool, op.node) == model.remove(op.pool, op.node)
        elif isinstance(op, JobStart):
            got = await store.job_start(op.pool, op.node, op.job)
            want = model.job_start(op.pool, op.node, op.job)
            assert (got.admitted, got.reason, got.version) == (want.admitted, want.reason, want.version)
        elif isinstance(op, JobFinish):
            assert await store.job_finish(op.pool, op.node, op.job) == model.job_finish(
                op.pool, op.node, op.job
            )

    # ------------------------------------------------------------ truth
    async def _truth(self) -> dict[str, Truth]:
        client, keys = self.admin, self.truth.keys
        out: dict[str, Truth] = {}
        for pool in POOLS:
            listing = await self.truth.relist(pool)
            assert not listing.malformed, f"malformed records in Redis: {listing.malformed}"
            node_prefix, jobs_prefix = keys.node_prefix(pool), keys.jobs_prefix(pool)
            names = await client.keys(f"{keys.node_prefix(pool)[: -len('node:')]}*")
            job_sets = {}
            for name in names:
                if name.startswith(jobs_prefix):
                    job_sets[name[len(jobs_prefix) :]] = set(await client.smembers(name))
            out[pool] = Truth(
                seq=listing.seq,
                epoch=listing.epoch,
                nodes={n.node_id: n for n in listing.nodes},
                alive=set(await client.zrange(keys.alive(pool), 0, -1)),
                node_keys={n[len(node_prefix) :] for n in names if n.startswith(node_prefix)},
                job_sets=job_sets,
            )
        return out

    def _check_redis(self, truth: dict[str, Truth]) -> None:
        """Redis holds exactly the model: records, versions, seqs, job sets; nobody over capacity."""
        for pool, t in truth.items():
            for node_id, node in t.nodes.items():
                assert 0 <= node.current_jobs <= node.max_jobs, f"{pool}/{node_id} over capacity: {node}"
                assert node.current_jobs == len(t.job_sets.get(node_id, ())), f"{pool}/{node_id} job count"
            assert t.node_keys == t.alive == set(t.nodes), (
                f"pool {pool}: node keys {sorted(t.node_keys)}, alive {sorted(t.alive)}, "
                f"listed {sorted(t.nodes)} disagree"
            )
            assert records_of(t.nodes) == self.model.records(pool), (
                f"pool {pool}: Redis {records_of(t.nodes)} != model {self.model.records(pool)}"
            )
            assert t.job_sets == self.model.job_sets(pool), f"pool {pool}: job sets {t.job_sets}"
            assert t.seq == self.model.seq[pool], f"pool {pool}: seq {t.seq} != model {self.model.seq[pool]}"
            assert (t.epoch is None) == (t.seq == 0), f"pool {pool}: epoch {t.epoch!r} at seq {t.seq}"

    async def _epochs_known(self) -> None:
        """Wait until no instance holds data of a pool whose epoch it has not learned yet."""

        def unknown() -> list[str]:
            return [
                f"{r.instance}/{p} at seq {r.last_seq(p)}"
                for r in self.instances
                for p in POOLS
                if r.state().positions[p][1] is None and (r.last_seq(p) or 0) > 0
            ]

        await _until(lambda: not unknown(), CONVERGE_S, lambda: f"epochs to be learned: {unknown()}")

    def _data_lost(self) -> None:
        """Redis restarted empty: seqs restart, so versions seen under an unknown epoch mean nothing."""
        self.model.lose_data()
        self.generation += 1
        for key, (epoch, _) in list(self.seen.items()):
            if epoch is None:
                del self.seen[key]

    # ------------------------------------------------------------ steps
    @initialize(count=st.integers(2, 3), nodes=st.lists(st.tuples(pools, node_ids, spec_args), max_size=6))
    @logged
    def start_instances(self, count: int, nodes: list[tuple[str, str, SpecArgs]]) -> None:
        """Start the instances, then register some nodes (node-creating rules may be off in an example)."""

        async def start() -> None:
            for i in range(count):
                cfg = instance_config(self.url, self.ns, seed=i)
                registry = LocklessRegistry(cfg, instance=f"i{i}")
                await registry.start()
                self.instances.append(registry)
            for pool, node_id, spec in nodes:
                await self._write(Register(0, pool, node_id, spec))

        self.run(start())

    @rule(op=registers)
    @logged
    def register(self, op: Register) -> None:
        self.run(self._write(op))

    @rule(op=beats)
    @logged
    def heartbeat(self, op: Beat) -> None:
        self.run(self._write(op))

    @rule(i=instances, batch=st.lists(quiet_beats, min_size=1, max_size=4))
    @logged
    def heartbeat_many(self, i: int, batch: list[Beat]) -> None:

        async def go() -> None:
            registry = self.inst(i)
            await self._ready(registry)
            specs = [b.spec.build(b.pool, b.node) if b.spec else None for b in batch]
            got = await registry.heartbeat_many(
                [
                    Heartbeat(pool=b.pool, node_id=b.node, load=b.load, spec=s)
                    for b, s in zip(batch, specs, strict=True)
                ]
            )
            for b, s, result in zip(batch, specs, got, strict=True):
                expected = self.model.heartbeat(b.pool, b.node, b.load, None, s)
                assert (result.version, result.changed, result.recreated) == expected, f"{b}: {result}"

        self.run(go())

    @rule(op=removes)
    @logged
    def remove(self, op: Remove) -> None:
        self.run(self._write(op))

    @rule(op=job_starts)
    @logged
    def job_start(self, op: JobStart) -> None:
        self.run(self._write(op))

    @rule(op=job_finishes)
    @logged
    def job_finish(self, op: JobFinish) -> None:
        self.run(self._write(op))

    @rule(i=instances, pool=pools, req=requirements, policy=st.sampled_from(("power_of_two", "least_loaded")))
    @logged
    def place_job(self, i: int, pool: str, req: Requirements, policy: str) -> None:
        self.jobs_placed += 1
        job_id = f"x{self.jobs_placed}"

        async def go() -> None:
            registry = self.inst(i)
            await self._ready(registry)
            placement = await registry.place_job(pool, job_id, req, policy=policy)
            tried = set(placement.selection.node_ids) if placement.selection else set()
            assert set(placement.rejected) <= tried
            for node_id in placement.rejected:
                outcome = self.model.admission(pool, node_id, job_id)
                assert not outcome.admitted, f"{node_id} rejected {job_id} but the model admits it"
            if placement.placed:
                assert placement.node_id in tried
                outcome = self.model.job_start(pool, placement.node_id, job_id)
                assert outcome.reason == "admitted", f"placed on {placement.node_id}: model says {outcome}"
                assert placement.version == outcome.version

        self.run(go())

    @rule(
        i=instances,
        pool=pools,
        count=st.integers(1, 4),
        req=requirements,
        policy=st.sampled_from(("power_of_two", "least_loaded")),
    )
    @logged
    def select(self, i: int, pool: str, count: int, req: Requirements, policy: str) -> None:
        registry = self.inst(i)
        selection = self.run(registry.select_nodes(pool, count, req, policy=policy))
        cached = registry.cached_nodes(pool)
        ids = selection.node_ids
        assert len(ids) == len(set(ids)) <= count, f"picks {ids} not distinct or over {count}"
        for pick in selection.picks:
            assert is_placeable(pick) and unmet(pick, req) is None, f"{pick} cannot take {req}"
            assert cached.get(pick.node_id) == pick, f"{pick.node_id} is not what L1 holds"

    @rule(i=instances, pool=pools, node_id=node_ids)
    @logged
    def read(self, i: int, pool: str, node_id: str) -> None:
        registry = self.inst(i)
        before = version_in(registry, pool, node_id)

        async def go() -> None:
            node = await registry.get_node(pool, node_id)
            if node is not None:
                assert node.node_id == node_id and node.pool == pool
                if self.generation == 0:
                    assert node.version >= before, f"read went back from {before} to {node.version}"

        self.run(go())

    @rule(pool=pools, k=st.integers(0, len(NODE_IDS) - 1), reap_with=st.none() | instances)
    @logged
    def lapse(self, pool: str, k: int, reap_with: int | None) -> None:
        """A node's heartbeat is now an hour old (server time): dead to job_start and the reaper.

        With ``reap_with``, that instance's reaper runs right after.
        """
        existing = sorted(self.model.pool_nodes(pool))
        if not existing:
            return
        node_id = existing[k % len(existing)]

        async def go() -> None:
            seconds, micros = await self.admin.time()
            past = int(seconds) * 1000 + int(micros) // 1000 - int(6 * DEAD_AFTER_S * 1000)
            await self.admin.zadd(self.truth.keys.alive(pool), {node_id: past}, xx=True)

        self.run(go())
        self.model.lapse(pool, node_id)
        TALLY["lapsed"] += 1
        if reap_with is not None:
            self._reap(reap_with)

    @rule(i=instances)
    @logged
    def reap(self, i: int) -> None:
        self._reap(i)

    def _reap(self, i: int) -> None:
        registry = self.inst(i)
        # reap_once decides before its first await, per pool, whether it may reap (the pool's mode
        # NORMAL, no grace); on one server every pool has the instance's mode.
        active = [p for p in sorted(POOLS) if registry.mode_of(p) is Mode.NORMAL]
        reaped = self.run(registry.reap_once())
        if not active:
            TALLY["reap:not_normal"] += 1
            assert reaped == [], f"reaped {reaped} while {registry.mode}"
            return
        TALLY["reap:reaped_nodes"] += len(reaped)
        at = 0
        for pool in active:
            lapsed = self.model.lapsed(pool)
            order = reaped[at : at + len(lapsed)]
            at += len(lapsed)
            assert set(order) == lapsed, f"pool {pool}: reaped {order}, lapsed {sorted(lapsed)}"
            self.model.reap(pool, order)
        assert at == len(reaped), f"reaped {reaped}: more than the lapsed nodes"

    # ------------------------------------------------------------ faults
    @rule(ops=st.lists(write_ops, min_size=1, max_size=3), trim=st.booleans())
    @logged
    def lose_events(self, ops: list[Op], trim: bool) -> None:
        """Kill every subscription, write while they reconnect; maybe trim the logs (forces a relist)."""
        TALLY["fault:kill_pubsub"] += 1
        TALLY["fault:trim_log"] += trim
        self.server.kill_clients("pubsub")

        async def go() -> None:
            for op in ops:
                await self._write(op)
            if trim:
                for pool in POOLS:
                    await self.admin.xtrim(self.truth.keys.log(pool), maxlen=0, approximate=False)

        self.run(go())

    @rule(
        ops=st.lists(
            st.one_of(registers, quiet_beats, removes, job_starts, job_finishes), min_size=1, max_size=2
        )
    )
    @logged
    def silent_writes(self, ops: list[Op]) -> None:
        """Writes in Redis and its log whose events nobody receives (only the health probe can tell)."""
        TALLY["fault:silent_loss"] += 1

        async def go() -> None:
            for op in ops:
                await self._write_unheard(op)

        self.run(go())

    @rule(pool=pools, garbage=st.sampled_from(("not json", '{"op": "register"}', "[]", "\xff")))
    @logged
    def publish_garbage(self, pool: str, garbage: str) -> None:
        TALLY["fault:garbage_event"] += 1
        self.run(self.admin.publish(self.truth.keys.events(pool), garbage))

    @rule()
    @logged
    def kill_command_connections(self) -> None:
        TALLY["fault:kill_normal"] += 1
        self.server.kill_clients("normal")

    @rule(keep_data=st.booleans())
    @logged
    def restart_server(self, keep_data: bool) -> None:
        """Restart while nothing runs: clients find dead sockets; an empty restart loses everything."""
        TALLY["fault:restart_keep" if keep_data else "fault:restart_empty"] += 1
        if not keep_data and WORK_AROUND_EPOCH_BUG:
            self.run(self._epochs_known())
        self.server.restart(keep_data=keep_data)
        if not keep_data:
            self._data_lost()

    @rule(w=instances, keep_data=st.booleans(), ops=st.lists(journal_ops, max_size=4))
    @logged
    def outage(self, w: int, keep_data: bool, ops: list[Op]) -> None:
        """Stop Redis under running instances; journal writes on one; start it again; replay."""
        TALLY["fault:outage_keep" if keep_data else "fault:outage_empty"] += 1
        registry = self.inst(w)
        # What the journal should hold, as (op, spec sent); and Redis as the replay will find it.
        journal: list[tuple[Op, NodeSpec | None]] = []
        base = self.model.copy()
        if not keep_data:
            base.lose_data()
        registry.take_replay_rejections()  # only this outage's rejections are compared below

        async def go() -> None:
            await self._ready(registry)
            if not keep_data and WORK_AROUND_EPOCH_BUG:
                await self._epochs_known()
            if keep_data:
                await self.admin.save()
            await asyncio.to_thread(self.server.stop)
            try:
                await _until(
                    lambda: registry.mode is Mode.LOCAL_ONLY,
                    CONVERGE_S,
                    lambda: f"{registry.instance} to reach LOCAL_ONLY (is {registry.mode})",
                )
                for pool in POOLS:
                    for node_id in registry.cached_nodes(pool):
                        started = time.monotonic()
                        read = await registry.read_node(pool, node_id)
                        assert time.monotonic() - started < PAUSED_READ_BOUND_S
                        assert read.stale and read.mode is Mode.LOCAL_ONLY and read.node is not None
                for op in ops:
                    await self._journal(registry, op, journal, base)
                TALLY["journaled"] += len(journal)
            finally:
                if not keep_data:
                    (self.server.workdir / "dump.rdb").unlink(missing_ok=True)
                await asyncio.to_thread(self.server.start)
            await _until(
                lambda: (
                    all(r.mode is not Mode.LOCAL_ONLY for r in self.instances)
                    and not registry.state().journal_depth
                ),
                CONVERGE_S,
                lambda: (
                    f"recovery: modes {[r.mode.value for r in self.instances]}, "
                    f"journal {registry.state().journal_depth}"
                ),
            )

        self.run(go())
        if not keep_data:
            self._data_lost()
        before = self.model.copy()
        rejected = self._replay(self.model, journal)
        for op, _ in journal:
            if isinstance(op, JobStart):
                TALLY[f"replayed_admission:{before.job_start(op.pool, op.node, op.job).reason}"] += 1
        replayed = [(a.job_id, a.node_id, a.reason) for a in registry.take_replay_rejections()]
        assert replayed == rejected, f"replay rejections {replayed} != model {rejected}"

    @staticmethod
    def _replay(
        model: RegistryModel, journal: list[tuple[Op, NodeSpec | None]]
    ) -> list[tuple[str, str, str]]:
        """Apply journaled writes to ``model`` in order; returns the admissions Redis will refuse."""
        rejected = []
        for op, spec in journal:
            if isinstance(op, Register):
                assert spec is not None
                model.register(spec)
            elif isinstance(op, Beat):
                model.heartbeat(op.pool, op.node, op.load, None, spec)
            elif isinstance(op, Remove):
                model.remove(op.pool, op.node)
            elif isinstance(op, JobStart):
                outcome = model.job_start(op.pool, op.node, op.job)
                if not outcome.admitted:
                    rejected.append((op.job, op.node, outcome.reason))
            elif isinstance(op, JobFinish):
                model.job_finish(op.pool, op.node, op.job)
        return rejected

    async def _journal(
        self,
        registry: LocklessRegistry,
        op: Op,
        journal: list[tuple[Op, NodeSpec | None]],
        base: RegistryModel,
    ) -> None:
        """One write in LOCAL_ONLY: check its local answer and mirror the journal (heartbeats coalesce)."""
        if isinstance(op, Register):
            # Keep max_jobs at or above the jobs the node will run when this replays.
            at_replay = base.copy()
            self._replay(at_replay, journal)
            node = at_replay.get(op.pool, op.node)
            spec = op.spec.build(op.pool, op.node, at_least=node.current_jobs if node else 0)
            assert await registry.register_node(spec) == 0
            journal.append((op, spec))
        elif isinstance(op, Beat):
            spec = op.spec.build(op.pool, op.node) if op.spec else None
            got = await registry.heartbeat(op.pool, op.node, load=op.load, spec=spec)
            assert got.journaled
            same = [k for k, (j, _) in enumerate(journal) if (j.pool, j.node) == (op.pool, op.node)]
            if same and isinstance(journal[same[-1]][0], Beat):
                journal[same[-1]] = (op, spec)  # replaces the node's newest entry in place
            else:
                journal.append((op, spec))
        elif isinstance(op, Remove):
            await registry.remove_node(op.pool, op.node)
            journal.append((op, None))
        elif isinstance(op, JobStart):
            free = sorted(n for n, s in registry.cached_nodes(op.pool).items() if is_placeable(s))
            if free and op.node not in free:
                # Aim at a node with room in the local view: only those are admitted locally.
                op = JobStart(op.inst, op.pool, free[NODE_IDS.index(op.node) % len(free)], op.job)
            local = registry.cached(op.pool, op.node)
            got = await registry.job_start(op.pool, op.node, op.job)
            placeable = local is not None and is_placeable(local)
            TALLY[f"local_admission:{got.reason}"] += 1
            assert got.admitted == placeable, f"{op}: local admission {got} with L1 {local}"
            if got.admitted:
                assert got.reason == "journaled"
                journal.append((op, None))
        elif isinstance(op, JobFinish):
            assert await registry.job_finish(op.pool, op.node, op.job)
            journal.append((op, None))

    @rule(duration=st.sampled_from((0.05, 0.3, 0.8)))
    @logged
    def pause_server(self, duration: float) -> None:
        """SIGSTOP with reads running: every read answers from L1 within the bound; then SIGCONT."""
        TALLY["fault:pause"] += 1
        before = {(k, p): r.cached_nodes(p) for k, r in enumerate(self.instances) for p in POOLS}
        epochs = {(k, p): r.state().positions[p][1] for k, r in enumerate(self.instances) for p in POOLS}

        async def reads() -> None:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                for (k, pool), nodes in before.items():
                    registry = self.instances[k]
                    for node_id, old in nodes.items():
                        started = time.monotonic()
                        node = await registry.get_node(pool, node_id)
                        took = time.monotonic() - started
                        assert took < PAUSED_READ_BOUND_S, f"read blocked {took:.3f} s ({registry.mode})"
                        if registry.state().positions[pool][1] == epochs[k, pool]:
                            # (An instance still catching up on a data loss may relist with reset.)
                            assert node is not None and node.version >= old.version, f"{node_id}: {node}"
                    started = time.monotonic()
                    await registry.select_nodes(pool, 2)
                    assert time.monotonic() - started < PAUSED_READ_BOUND_S
                    TALLY["paused_reads"] += len(nodes)
                await asyncio.sleep(0.02)  # pacing of the read loop, not a synchronisation

        self.server.pause()
        try:
            self.run(reads())
        finally:
            self.server.resume()
        self.run(
            _until(
                lambda: all(r.mode is not Mode.LOCAL_ONLY for r in self.instances),
                CONVERGE_S,
                lambda: (
                    f"instances to leave LOCAL_ONLY after SIGCONT: {[r.mode.value for r in self.instances]}"
                ),
            )
        )

    # ------------------------------------------------------------ settle
    @precondition(lambda self: bool(self.instances))
    @rule()
    @logged
    def settle(self) -> None:
        """Wait until every instance has caught up to every pool's seq, then demand exact agreement."""
        self.run(self._settle())

    async def _settle(self) -> None:
        def lagging(states: dict[str, tuple[int, str | None]]) -> list[str]:
            out = []
            for r in self.instances:
                state = r.state()
                positions = dict(state.positions)
                if not r.caught_up() or state.journal_depth or positions != states:
                    out.append(f"{r.instance}: {r.mode.value} at {positions}, journal {state.journal_depth}")
            return out

        deadline = time.monotonic() + CONVERGE_S
        while True:
            states = await self.truth.pool_states(list(POOLS))
            behind = lagging(states)
            if not behind:
                break
            if time.monotonic() >= deadline:
                raise AssertionError(f"not caught up within {CONVERGE_S} s to Redis {states}: {behind}")
            await asyncio.sleep(0.01)
        truth = await self._truth()
        self._check_redis(truth)
        for pool in POOLS:
            want = self.model.records(pool)
            for r in self.instances:
                got = records_of(r.cached_nodes(pool))
                assert got == want, f"{r.instance} L1 of {pool} after settling: {got} != Redis/model {want}"
                # The same through the read API, including nodes that do not exist.
                for node_id in NODE_IDS:
                    node = await r.get_node(pool, node_id)
                    assert (None if node is None else snapshot_record(node)) == want.get(node_id), node_id
                # Unconstrained least-loaded over the whole pool picks exactly the placeable nodes.
                everything = await r.select_nodes(pool, len(NODE_IDS), policy="least_loaded")
                assert set(everything.node_ids) == self.model.placeable(pool), (
                    f"{r.instance} selects {everything.node_ids} in {pool}; placeable: "
                    f"{sorted(self.model.placeable(pool))}"
                )
                assert everything.considered == len(want)
                assert sum(everything.filtered.values()) + len(everything.picks) == len(want), everything
                # Never a removed or full node, whatever the requirements and policy.
                for req in (Requirements(), Requirements(labels={"m1"}), Requirements(resources={"cpu": 4})):
                    for policy in ("power_of_two", "least_loaded"):
                        picked = await r.select_nodes(pool, 2, req, policy=policy)
                        fits = self.model.placeable(pool, req)
                        assert set(picked.node_ids) <= fits, (
                            f"{r.instance} picked {picked.node_ids} of {fits}"
                        )
                        assert len(picked.picks) == min(2, len(fits)), f"{picked.explain()} with {fits}"
        TALLY["settled"] += 1

    # --------------------------------------------------------- invariants
    @invariant()
    @logged
    def consistent_with_redis(self) -> None:
        if not self.instances:
            return
        # Caches first, Redis after: a cache may only be behind the Redis read, never ahead of it.
        caches = {
            (k, p): (r.cached_nodes(p), r.state().positions[p][1], r.state().assumed[p])
            for k, r in enumerate(self.instances)
            for p in POOLS
        }
        truth = self.run(self._truth())
        self._check_redis(truth)
        for (k, pool), (nodes, epoch, assumed) in caches.items():
            name = self.instances[k].instance
            known, seen = self.seen.get((k, pool), (None, {}))
            if known is not None and epoch != known:
                seen = {}  # a new life of the pool's data: versions restart (DESIGN.md section 5.5)
            for node_id, node in nodes.items():
                assert node.version >= seen.get(node_id, 0), (
                    f"{name}: {pool}/{node_id} went back from version {seen[node_id]} to {node.version}"
                )
                seen[node_id] = node.version
            self.seen[k, pool] = (epoch, seen)
            t = truth[pool]
            if self.generation and (epoch is None or epoch != t.epoch):
                continue  # has not yet noticed that Redis lost its data: it cannot know better
            for node_id, node in nodes.items():
                held = t.nodes.get(node_id)
                limit = held.version if held is not None else t.seq
                assert node.version <= limit, (
                    f"{name}: {pool}/{node_id} at version {node.version}, newer than Redis ({limit})"
                )
                if held is not None and held.version == node.version and node_id not in assumed:
                    assert snapshot_record(node) == snapshot_record(held), (
                        f"{name}: {pool}/{node_id} at version {node.version} is {node}, Redis holds {held}"
                    )

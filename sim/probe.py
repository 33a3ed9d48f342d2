"""The probe: every architecture's hot operations side by side, counted and timed, in one quiet pool.

After the phases of a run (Redis idle, the phases' keys flushed) the runner builds one
registry of each architecture of the experiment on a fresh namespace and pool of up to
:data:`MAX_NODES` nodes, and measures the five operations a scheduler calls
(``get``, ``select``, ``job_start``, ``job_finish``, ``heartbeat``) plus a raw redis-py
``PING`` as the calibration round trip. Two things come out, and both feed
``lockless-sim check`` (``sim/budgets.py``):

* **Counts** (deterministic, robust on any machine). Per operation, the ``INFO
  commandstats`` delta divided by the number of calls (``commands``: every command the
  server executed, the Lua scripts' inner calls included, since Redis counts those too;
  ``redis_usec``: the microseconds Redis spent executing them, from the same deltas: the
  Redis CPU an operation costs, which is what ``redis-select`` spends instead of the
  scheduler's), and, from one extra pass watched with ``MONITOR``, the commands *clients*
  sent (``client_commands``: script-internal calls, whose source MONITOR names ``lua``, left
  out; SLOWLOG cannot tell them apart on Redis 7+ and Valkey, which log them under the
  calling client's address). "A write is one round trip" reads ``client_commands.total
  == 1`` and ``evalsha == 1``; "an L1 read never touches Redis" reads ``commands.total == 0``.
* **Latencies, interleaved** (ratios robust on a noisy machine). Rounds of
  ``per_round`` calls per (architecture, operation) and of raw ``PING``, the order rotated
  every round, so drift from other processes falls on every lane alike. One sequential
  caller, per-call ``perf_counter_ns``, exact percentiles over every sample.

The probe's registries never reap (``reap_interval_s = 0``), their subscribers do not
ping and the ttl-cache does not relist (an hour's interval each): nothing runs in the
background that could land a command in a counting window. Administrative commands
(``info``, ``slowlog``, ``config``, ``client``, ``hello``, ``flushall``, and the ``echo``
that ends a watched pass) are never counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lockless import NodeSpec, RedisConfig, RedisStore, Registry
from sim import stats
from sim.architectures import build
from sim.config import ExperimentConfig

#: Operations probed per architecture, in their first-round order (``place`` is ``place_job``:
#: selection and admission, however the architecture does them).
OPS = ("get", "select", "job_start", "job_finish", "heartbeat", "place")
#: Operations that read a whole pool in a baseline: probed fewer times per round.
_POOL_READS = ("select", "place")
#: Commands that administer the server (ours or redis-py's connection set-up): never counted.
ADMIN_COMMANDS = frozenset(
    {"info", "slowlog", "config", "client", "hello", "flushall", "select", "auth", "echo"}
)
#: The probe pool never holds more nodes than this (a locked select reads every one of them).
MAX_NODES = 1000
_ADMIN_NAME = "lockless-probe-admin"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbePlan:
    """How many calls the probe makes."""

    rounds: int = 5
    """Interleaved rounds; the lane order rotates every round."""
    per_round: int = 40
    """Calls per lane per round (``select`` makes fewer: :attr:`selects_per_round`)."""
    selects_per_round: int = 10
    """A baseline's select reads the whole pool from Redis: fewer of them keep the probe short."""


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()}


def countable(stats: dict[str, int]) -> dict[str, int]:
    """``stats`` without administrative commands and zero entries."""
    return {k: v for k, v in stats.items() if v and k.split("|")[0] not in ADMIN_COMMANDS}


async def command_stats(client: aioredis.Redis) -> dict[str, int]:
    """``INFO commandstats`` as ``{command: calls}`` (Redis 7 subcommands kept as ``config|set``)."""
    return (await command_table(client))[0]


async def command_table(client: aioredis.Redis) -> tuple[dict[str, int], dict[str, int]]:
    """``INFO commandstats`` as ``({command: calls}, {command: usec})``."""
    info = await client.info("commandstats")
    calls, usec = {}, {}
    for name, fields in info.items():
        if isinstance(fields, dict) and "calls" in fields:
            key = name.removeprefix("cmdstat_").lower()
            calls[key] = int(fields["calls"])
            usec[key] = int(fields.get("usec", 0))
    return calls, usec


async def server_stats(url: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """The server's ``run_id`` (it changes when the server restarts), command calls and command usec."""
    client = admin_client(url)
    try:
        run_id = str((await client.info("server")).get("run_id", ""))
        calls, usec = await command_table(client)
        return run_id, calls, usec
    finally:
        await client.aclose()


def phase_commands(before: tuple[Any, ...], after: tuple[Any, ...]) -> dict[str, Any]:
    """What the server executed between two :func:`server_stats` snapshots (admin commands left out).

    ``usec`` is the time Redis spent executing them (INFO commandstats), by command.
    A server restarted in between (a ``restart_empty`` fault) starts its counts again:
    the result then holds the counts since the restart and says so.
    """
    restarted = before[0] != after[0]
    calls = countable(after[1] if restarted else _delta(before[1], after[1]))
    usec: dict[str, int] = {}
    if len(before) > 2 and len(after) > 2:
        usec = countable(after[2] if restarted else _delta(before[2], after[2]))
    return {
        "calls": dict(sorted(calls.items())),
        "total": sum(calls.values()),
        "usec": dict(sorted(usec.items())),
        "usec_total": sum(usec.values()),
        "server_restarted": restarted,
    }


def admin_client(url: str) -> aioredis.Redis:
    """A short-timeout client without retries for the harness's own INFO / SLOWLOG / CONFIG calls."""
    return RedisStore.make_client(
        RedisConfig(url=url, socket_timeout_s=5.0, connect_timeout_s=5.0, pool_timeout_s=5.0, retries=0),
        client_name=_ADMIN_NAME,
    )


def _summary(samples_ns: Sequence[int]) -> dict[str, Any]:
    # Exact percentiles over every sample, with the thin ones marked (sim/stats.py).
    return stats.summarize_samples(np.asarray(samples_ns, dtype=np.float64) / 1000.0)


def _per_op(calls: Counter[str], ops: int) -> dict[str, float]:
    out = {k: round(v / ops, 3) for k, v in sorted(calls.items()) if v}
    out["total"] = round(sum(calls.values()) / ops, 3)
    return out


class _Lane:
    """One (architecture, operation): makes its calls on distinct nodes and distinct job ids."""

    def __init__(self, arch: str, op: str, registry: Registry | None, specs: Sequence[NodeSpec]) -> None:
        self.arch, self.op, self.registry, self.specs = arch, op, registry, specs
        self.samples: list[int] = []
        self.commands: Counter[str] = Counter()
        self.usec = 0
        self.calls = 0
        self._cursor = 0
        self._jobs: list[tuple[NodeSpec, str]] = []
        self._serial = 0

    def call(self, admin: aioredis.Redis) -> Callable[[], Awaitable[Any]]:
        """The next call of this lane (bound to its node and job), ready to be timed."""
        reg, pool = self.registry, self.specs[0].pool
        if self.op == "ping":
            return admin.ping
        assert reg is not None
        spec = self.specs[self._cursor % len(self.specs)]
        self._cursor += 1
        if self.op == "get":
            return lambda: reg.get_node(pool, spec.node_id)
        if self.op == "select":
            return lambda: reg.select_nodes(pool, 1)
        if self.op == "place":
            self._serial += 1
            placed = f"probe-place-{self.arch}-{self._serial}"
            return lambda: reg.place_job(pool, placed)
        if self.op == "heartbeat":
            # Same load as registered: a quiet heartbeat (no new version, no event).
            return lambda: reg.heartbeat(pool, spec.node_id, load=spec.load)
        if self.op == "job_start":
            self._serial += 1
            job = f"probe-{self.arch}-{self._serial}"
            self._jobs.append((spec, job))
            return lambda: reg.job_start(pool, spec.node_id, job)
        if self.op == "job_finish":
            # Finishes the jobs its sibling job_start lane admitted, oldest first.
            node, job = self.pending.pop(0)
            return lambda: reg.job_finish(pool, node.node_id, job)
        raise ValueError(f"probe op: got {self.op!r}; allowed: ping | {' | '.join(OPS)}")

    pending: list[tuple[NodeSpec, str]]


async def _run_lane(lane: _Lane, admin: aioredis.Redis, n: int, *, timed: bool) -> None:
    pc = time.perf_counter_ns
    for _ in range(n):
        call = lane.call(admin)
        t0 = pc()
        await call()
        if timed:
            lane.samples.append(pc() - t0)


async def _client_commands(
    url: str, admin: aioredis.Redis, run: Callable[[], Awaitable[None]]
) -> Counter[str]:
    """Commands clients (not scripts, not us) sent while ``run`` ran, as MONITOR saw them.

    MONITOR names the source of a script's inner call ``lua`` (Redis 6.2 and 7, Valkey).
    The pass ends at an ``ECHO`` of a fresh token sent after ``run``: MONITOR shows
    commands in execution order, so everything ``run`` sent is before it.
    """
    token = f"probe-end-{uuid.uuid4().hex}"
    out: Counter[str] = Counter()
    watcher = admin_client(url)
    try:
        async with watcher.monitor() as monitor:  # returns once the server said OK
            await run()
            await admin.echo(token)
            while True:
                entry = await asyncio.wait_for(monitor.next_command(), timeout=10.0)
                words = str(entry.get("command", "")).split(" ", 1)
                cmd = words[0].lower()
                if cmd == "echo" and token in words[-1]:
                    return out
                if entry.get("client_type") == "lua" or not cmd or cmd in ADMIN_COMMANDS:
                    continue  # a script's inner call, or administration
                out[cmd] += 1
    finally:
        await watcher.aclose()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def run_probe(
    config: ExperimentConfig, url: str, *, plan: ProbePlan | None = None, seed_ns: str | None = None
) -> dict[str, Any]:
    """Probe every architecture of ``config`` against the server at ``url``; returns plain data.

    Leaves nothing behind: the probe's keys are deleted and no server setting is changed.
    """
    plan = plan or ProbePlan()
    archs = list(config.experiment.architectures)
    ns = seed_ns or f"probe-{config.experiment.name}-{uuid.uuid4().hex[:6]}"
    pool = config.nodes.pools[0]
    n_nodes = min(config.nodes.count, MAX_NODES)
    base = config.registry
    reg_cfg = dataclasses.replace(
        base,
        redis=dataclasses.replace(base.redis, url=url, namespace=ns),
        nodes=dataclasses.replace(base.nodes, reap_interval_s=0.0, dead_after_s=3600.0, ttl_s=7200.0),
        cache=dataclasses.replace(base.cache, entry_ttl_s=3600.0, seed=config.experiment.seed),
        subscriber=dataclasses.replace(base.subscriber, ping_interval_s=3600.0, pong_timeout_s=60.0),
    )
    specs = [
        NodeSpec(
            node_id=f"probe{i:05d}",
            pool=pool,
            # Room for every job a round admits on one node before its finishes run.
            max_jobs=max(config.nodes.max_jobs, plan.per_round),
            resources=dict(config.nodes.resources),
        )
        for i in range(n_nodes)
    ]
    admin = admin_client(url)
    writer = RedisStore(reg_cfg.redis, reg_cfg.nodes)
    registries: dict[str, Registry] = {}
    try:
        await writer.load_scripts()
        for i in range(0, len(specs), 500):
            await writer.register_many(specs[i : i + 500])
        for arch in archs:
            quiet = dataclasses.replace(config.baselines, refresh_s=3600.0)  # no relist mid-count
            registries[arch] = build(arch, reg_cfg, instance=f"probe-{arch}", options=quiet)
        await asyncio.gather(*(r.start() for r in registries.values()))

        lanes: list[_Lane] = [_Lane("redis", "ping", None, specs)]
        for arch in archs:
            by_op = {op: _Lane(arch, op, registries[arch], specs) for op in OPS}
            by_op["job_finish"].pending = by_op["job_start"]._jobs
            lanes += by_op.values()

        def count(lane: _Lane) -> int:
            return plan.selects_per_round if lane.op in _POOL_READS else plan.per_round

        for lane in lanes:  # warm-up, unrecorded: connections opened, scripts loaded, indexes built
            await _run_lane(lane, admin, 3, timed=False)
        for r in range(plan.rounds):
            shift = r % len(lanes)
            for lane in lanes[shift:] + lanes[:shift]:
                if lane.op == "job_finish" and len(lane.pending) < count(lane):
                    # Admit the jobs to finish first, outside the window (rotation may put
                    # this lane before its job_start lane).
                    starter = lanes[lanes.index(lane) - 1]
                    await _run_lane(starter, admin, count(lane) - len(lane.pending), timed=False)
                before, usec0 = await command_table(admin)
                await _run_lane(lane, admin, count(lane), timed=True)
                after, usec1 = await command_table(admin)
                lane.commands.update(countable(_delta(before, after)))
                lane.usec += sum(countable(_delta(usec0, usec1)).values())
                lane.calls += count(lane)
        for lane in lanes:  # finish whatever the rotation left admitted
            while lane.op == "job_finish" and lane.pending:
                await _run_lane(lane, admin, 1, timed=False)

        client_cmds: dict[tuple[str, str], dict[str, float]] = {}
        for lane in lanes[1:]:
            n = count(lane)
            if lane.op == "job_finish" and len(lane.pending) < n:
                await _run_lane(lanes[lanes.index(lane) - 1], admin, n - len(lane.pending), timed=False)
            try:
                seen = await _client_commands(
                    url, admin, lambda lane=lane, n=n: _run_lane(lane, admin, n, timed=False)
                )
            except RedisError:
                client_cmds = {}  # MONITOR refused (a managed server): no client-command split
                break
            client_cmds[(lane.arch, lane.op)] = _per_op(seen, n)
    finally:
        await asyncio.gather(*(r.close() for r in registries.values()), return_exceptions=True)
        async for key in admin.scan_iter(match=f"{ns}:*", count=1000):
            await admin.unlink(key)
        await writer.close()
        await admin.aclose()

    out: dict[str, Any] = {
        "nodes": n_nodes,
        "pool": pool,
        "plan": dataclasses.asdict(plan),
        "order": "interleaved: lanes rotated every round; one sequential caller; exact percentiles",
        "ping": _summary(lanes[0].samples),
        "client_commands_measured": bool(client_cmds),
        "architectures": {},
    }
    for lane in lanes[1:]:
        entry = _summary(lane.samples) if lane.samples else {"count": 0}
        entry["commands"] = _per_op(lane.commands, lane.calls) if lane.calls else {}
        entry["redis_usec"] = round(lane.usec / lane.calls, 1) if lane.calls else 0.0
        if (lane.arch, lane.op) in client_cmds:
            entry["client_commands"] = client_cmds[(lane.arch, lane.op)]
        out["architectures"].setdefault(lane.arch, {})[lane.op] = entry
    return out

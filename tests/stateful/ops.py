"""What the state machine can do: its world's sizes, the write ops as values, their strategies.

The machine (``machine.py``) draws these; the steps (``steps.py``) and the faults
(``faults.py``) carry them out against the instances and the model. Everything here is
data: no Redis, no event loop. ``TALLY`` lives here too, since every part counts into it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import strategies as st

from lockless.config import (
    CacheConfig,
    NodeLifecycleConfig,
    RedisConfig,
    RegistryConfig,
    SubscriberConfig,
)
from lockless.core.modes import ModeThresholds
from lockless.core.snapshot import NodeSpec, Requirements
from tests.support import CONNECT_TIMEOUT_S

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

#: Totals over every example of a run, printed by the test (how many steps, which faults).
TALLY: Counter[str] = Counter()


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
            url=url,
            namespace=ns,
            socket_timeout_s=0.25,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            pool_timeout_s=0.25,
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

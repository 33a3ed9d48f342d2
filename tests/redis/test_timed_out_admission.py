"""A job_start whose command timed out must not be answered by a local decision Redis may contradict.

Found by the harness's job accounting (issue 11: ``phantom_start`` in the freeze fault of
``experiments/outage-hang.toml`` and of an earlier ``defects.toml``). When Redis freezes, a
``job_start`` already sent times out; the failure that opens the circuit makes the registry
answer from L1 (``_admit_locally``), which may say ``full``. But the command is still in
the server's socket buffer and runs when Redis resumes: Redis admits the job the scheduler
was told was rejected. The scheduler never finishes it (a slot leaked for good), or places
it again elsewhere (the job runs twice). An admission whose command may have reached Redis
has an unknown outcome: the answer must hold whatever Redis decides. Fixed in
``WritePath._admit_locally``: a local rejection of a job_start that was sent also journals
the job's release, which the replay applies (it releases only that job id); a local
admission is journaled and replayed as before (``already_admitted``, admitted, or refused
and reported).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

from lockless import LocklessRegistry, NodeSpec
from sim.redis_server import RedisServer
from tests.support import eventually, fast_config, store_for


async def test_a_timed_out_admission_is_never_rejected_while_redis_admits_it(
    fault_server: RedisServer,
) -> None:
    contradicted = []
    for _ in range(5):  # the order Redis runs the two held commands in is its own; try a few times
        ns = f"t-{uuid.uuid4().hex[:8]}"
        config = fast_config(fault_server.url, ns)
        config = dataclasses.replace(config, modes=dataclasses.replace(config.modes, failures_to_local=1))
        store = store_for(config)
        await store.load_scripts()
        await store.register(NodeSpec(node_id="n1", pool="p", max_jobs=1))
        async with LocklessRegistry(config, instance="r") as registry:
            fault_server.pause()
            try:
                answers = await asyncio.gather(
                    registry.job_start("p", "n1", "jA"), registry.job_start("p", "n1", "jB")
                )
            finally:
                fault_server.resume()
            await eventually(lambda: registry.mode.value == "normal", timeout=10, what="recovery")
        held = await store.client.smembers(store.keys.jobs("p", "n1"))
        await store.close()
        told = {a.job_id: a for a in answers}
        contradicted += [job for job in held if not told[job].admitted]
    assert contradicted == [], f"Redis admitted {contradicted}, which the registry reported as rejected"

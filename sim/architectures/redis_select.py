"""``redis-select``: no cache; selection and admission in one script call (one round trip).

Design: **no index of its own; selection inside the script over the pool's ``alive``
zset, which every writer already keeps.** Why not a sorted set of free capacity kept
next to the records, the other design a team would weigh:

* An index is only right if *every* writer updates it atomically with the record: node
  agents heartbeating (a heartbeat may re-create a node or replace its job set), the
  reaper, every scheduler's ``job_start``/``job_finish``, registrations. Those are the
  library's scripts, shared by the whole fleet; an index updated by only some of them
  drifts (a finish elsewhere leaves a node looking fuller than it is, a node re-created
  by a heartbeat is never indexed). Adding it means changing every writer in the fleet,
  node agents included: a different system, not a drop-in alternative.
* ``alive`` (node id -> last heartbeat) is already maintained atomically by every one of
  those scripts. Power of two choices only needs uniform samples of live nodes, which
  ``ZRANGE alive r r`` by random rank gives in O(log n): selection plus admission cost
  O(candidates), not O(pool). The randoms come from the instance's seeded generator (in
  ARGV), so runs replay exactly and no nondeterministic command runs in the script.
* ``least_loaded`` needs the pool ordered by utilisation, which only an index or a scan
  gives; without an index it scans (every live node's fields, in Redis). That cost is
  real and is reported (Redis CPU per placement), not hidden.

So the experiments route nothing differently for this architecture: its writes (and the
harness's heartbeats) are the library's scripts, exactly as for every other design.

Admission is the library's own ``JOB_START`` (``lockless.SCRIPTS``), wrapped into a Lua
function of this script rather than copied: capacity, liveness and idempotency rules are
the library's, to the letter, and the same event and log entry are written.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from lockless import (
    PLACEMENT_CANDIDATES,
    SCRIPTS,
    ConfigError,
    Mode,
    Placement,
    RedisUnavailable,
    Requirements,
    Selection,
    parse_node_hash,
)
from sim.architectures.base import RedisBackedRegistry

POLICIES = ("power_of_two", "least_loaded")
#: Extra sampled candidates before falling back to a scan, as the library's selection.
SAMPLE_SLACK = 16


def _wrap_library_script(body: str, name: str) -> str:
    """The library script ``body`` as a Lua function ``name(K, A)`` of KEYS and ARGV tables."""
    wrapped = re.sub(r"\bKEYS\b", "K", re.sub(r"\bARGV\b", "A", body))
    if re.search(r"\b(KEYS|ARGV)\b", wrapped):  # pragma: no cover - the substitution is total
        raise AssertionError(f"library script {name} still names KEYS/ARGV after wrapping")
    return f"local function {name}(K, A)\n{wrapped}\nend\n"


# KEYS[1] pool alive zset   KEYS[2] pool seq   KEYS[3] pool epoch   KEYS[4] pool log
# ARGV[1] events channel    ARGV[2] pool       ARGV[3] epoch token  ARGV[4] log max length
# ARGV[5] node TTL (ms)     ARGV[6] dead_after (ms)
# ARGV[7] node hash key prefix   ARGV[8] job set key prefix  (both carry the pool's hash tag,
#         so every key the script builds lives in the pool's slot, as in the library's REAP)
# ARGV[9] 'place' (select, then admit) | 'select' (read only)   ARGV[10] job id ('place')
# ARGV[11] candidates wanted   ARGV[12] policy: power_of_two | least_loaded
# ARGV[13] required resources, JSON object   ARGV[14] required labels, JSON array
# ARGV[15..] uniform randoms in [0, 1) from the caller's seeded generator
# returns: JSON {picks = [{id, rec}], considered, filtered = {reason: n}, exhaustive,
#   admitted = node id | false, reason, version, current_jobs, max_jobs, rejected = [ids]}
#   ('place': picks holds the admitted node's record after admission; 'select': every pick's)
SELECT_AND_ADMIT = (
    _wrap_library_script(SCRIPTS["job_start"], "library_job_start")
    + r"""
local alive, dead_ms = KEYS[1], tonumber(ARGV[6])
local node_prefix, jobs_prefix = ARGV[7], ARGV[8]
local want, policy = tonumber(ARGV[11]), ARGV[12]
local need_res, need_labels = cjson.decode(ARGV[13]), cjson.decode(ARGV[14])
local res_names = {}
for name in pairs(need_res) do res_names[#res_names + 1] = name end
table.sort(res_names)
table.sort(need_labels)
local constrained = #res_names > 0 or #need_labels > 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local next_random = 14
local function rnd()
  next_random = next_random + 1
  local v = ARGV[next_random]
  if v then return tonumber(v) end
  return nil
end

local filtered = {}
local function bump(reason) filtered[reason] = (filtered[reason] or 0) + 1 end

-- The first requirement a node fails, in the library's order: labels, then resources.
local function unmet(resources_json, labels_json)
  if #need_labels > 0 then
    local have = {}
    for _, l in ipairs(cjson.decode(labels_json)) do have[l] = true end
    for _, l in ipairs(need_labels) do
      if not have[l] then return 'missing label ' .. l end
    end
  end
  if #res_names > 0 then
    local res = cjson.decode(resources_json)
    for _, name in ipairs(res_names) do
      if (tonumber(res[name]) or 0) < tonumber(need_res[name]) then return 'short of ' .. name end
    end
  end
  return nil
end

-- A candidate's placement key {utilisation, load, id}, or nil (and the reason counted).
local function check(id, beat)
  local h = redis.call('HMGET', node_prefix .. id, 'status', 'max_jobs', 'current_jobs', 'load',
                       'resources', 'labels')
  if not h[1] then bump('gone') return nil end
  if h[1] ~= 'up' then bump('draining') return nil end
  local max, cur = tonumber(h[2]), tonumber(h[3])
  if cur >= max then bump('full') return nil end
  if now - tonumber(beat) > dead_ms then bump('not alive') return nil end
  if constrained then
    local why = unmet(h[5], h[6])
    if why then bump(why) return nil end
  end
  return {cur / max, tonumber(h[4]) or 0, id}
end

-- The library's placement order: least utilised, then least loaded, then by id.
local function better(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[3] < b[3]
end

-- Exhaustive: every live node checked; filtered counts are then exact.
local function scan()
  filtered = {}
  local flat = redis.call('ZRANGE', alive, 0, -1, 'WITHSCORES')
  local fits = {}
  for i = 1, #flat, 2 do
    local key = check(flat[i], flat[i + 1])
    if key then fits[#fits + 1] = key end
  end
  return fits
end

local function least_loaded(fits)
  local best = {}
  for _, key in ipairs(fits) do
    local pos = #best + 1
    while pos > 1 and better(key, best[pos - 1]) do pos = pos - 1 end
    if pos <= want then
      table.insert(best, pos, key)
      if #best > want then table.remove(best) end
    end
  end
  return best
end

-- Two random fits, the better one kept, until enough (the library's scan-and-choose).
local function choose_two(fits)
  local picks = {}
  while #fits > 0 and #picks < want do
    local i = 1
    local ua, ub = rnd(), rnd()
    if #fits > 1 and ua and ub then
      local a = math.floor(ua * #fits) + 1
      local b = math.floor(ub * (#fits - 1)) + 1
      if b >= a then b = b + 1 end
      if better(fits[b], fits[a]) then i = b else i = a end
    elseif #fits > 1 then  -- out of randoms: the least loaded of the rest
      for j = 2, #fits do if better(fits[j], fits[i]) then i = j end end
    end
    picks[#picks + 1] = table.remove(fits, i)
  end
  return picks
end

-- Power of two choices by sampling live nodes at random ranks of the alive zset.
local function sample(n)
  local picks, chosen = {}, {}
  local budget = 2 * want + """
    + str(SAMPLE_SLACK)
    + r"""
  while #picks < want and budget > 0 do
    local pair = {}
    while #pair < 2 and budget > 0 do
      budget = budget - 1
      local u = rnd()
      if not u then budget = 0 break end
      local got = redis.call('ZRANGE', alive, math.floor(u * n), math.floor(u * n), 'WITHSCORES')
      if got[1] and not chosen[got[1]] then
        local key = check(got[1], got[2])
        if key then pair[#pair + 1] = key end
      end
    end
    if #pair == 2 and pair[1][3] == pair[2][3] then table.remove(pair) end
    if #pair > 0 then
      local best = pair[1]
      if pair[2] and better(pair[2], best) then best = pair[2] end
      chosen[best[3]] = true
      picks[#picks + 1] = best
    end
  end
  return picks
end

local n = redis.call('ZCARD', alive)
local picks, exhaustive = nil, true
if policy == 'power_of_two' and n > 2 * want then
  picks = sample(n)
  exhaustive = false
  if #picks < want then picks, exhaustive = nil, true end
end
if not picks then
  local fits = scan()
  if policy == 'least_loaded' then picks = least_loaded(fits) else picks = choose_two(fits) end
end

local function record(id)
  local flat = redis.call('HGETALL', node_prefix .. id)
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  return rec
end

local out = {picks = {}, considered = n, filtered = filtered, exhaustive = exhaustive,
             admitted = false, rejected = {}}
if ARGV[9] == 'place' then
  for _, key in ipairs(picks) do
    local id = key[3]
    local r = library_job_start(
      {node_prefix .. id, jobs_prefix .. id, alive, KEYS[2], KEYS[3], KEYS[4]},
      {ARGV[1], ARGV[2], id, ARGV[3], ARGV[4], ARGV[5], ARGV[10], ARGV[6]})
    if tonumber(r[1]) == 1 then
      out.admitted, out.reason, out.version, out.current_jobs, out.max_jobs = id, r[2], r[3], r[4], r[5]
      out.picks = {{id = id, rec = record(id)}}
      return cjson.encode(out)
    end
    out.rejected[#out.rejected + 1] = id
  end
  return cjson.encode(out)
end
for _, key in ipairs(picks) do out.picks[#out.picks + 1] = {id = key[3], rec = record(key[3])} end
return cjson.encode(out)
"""
)


class RedisSelectRegistry(RedisBackedRegistry):
    """See the module docstring. Writes and ``get_node`` are the library's store calls."""

    name = "redis-select"

    async def start(self) -> None:
        await super().start()
        self._script = self.store.client.register_script(SELECT_AND_ADMIT)
        self._token = uuid.uuid4().hex  # only used if this script's admission creates the pool's epoch
        keys, nodes = self.store.keys, self.config.nodes
        self._fixed = {
            "ttl_ms": str(int(nodes.ttl_s * 1000)),
            "dead_ms": str(int(nodes.dead_after_s * 1000)),
            "log_max": str(self.config.redis.log_max_len),
        }
        self._keys = keys
        await self._call(lambda: self.store.client.script_load(SELECT_AND_ADMIT))

    async def _call(self, fn):  # type: ignore[no-untyped-def]
        # The store's translation rule: an unreachable or busy server is RedisUnavailable;
        # any other ResponseError is a bug in what was sent, and propagates as itself.
        try:
            result = await fn()
        except ResponseError as exc:
            text = str(exc)
            if isinstance(exc, NoScriptError) or "BUSY" in text or "LOADING" in text:
                self._set_mode_failed(exc)
                raise RedisUnavailable(f"redis-select: {exc}") from exc
            raise
        except (TimeoutError, RedisError, OSError) as exc:
            self._set_mode_failed(exc)
            raise RedisUnavailable(f"redis-select: {type(exc).__name__}: {exc}") from exc
        self._redis_ok()
        return result

    def _set_mode_failed(self, exc: BaseException) -> None:
        self._set_mode(Mode.LOCAL_ONLY, f"redis call failed: {exc}")

    def _redis_ok(self) -> None:
        self._set_mode(Mode.NORMAL, "redis answered")

    async def _run(
        self, pool: str, mode: str, job_id: str, count: int, requirements: Requirements | None, policy: str
    ) -> dict[str, Any]:
        self._check_pool(pool)
        if policy not in POLICIES:
            raise ConfigError("policy", policy, " | ".join(POLICIES))
        if not isinstance(count, int) or count < 1:
            raise ConfigError("count", count, "an integer >= 1")
        req = requirements or Requirements()
        k = self._keys
        randoms = [f"{self._rng.random():.9f}" for _ in range(2 * count + SAMPLE_SLACK + 4 * count)]
        args = [
            k.events(pool),
            pool,
            self._token,
            self._fixed["log_max"],
            self._fixed["ttl_ms"],
            self._fixed["dead_ms"],
            k.node_prefix(pool),
            k.jobs_prefix(pool),
            mode,
            job_id,
            str(count),
            policy,
            json.dumps(dict(req.resources), sort_keys=True) if req.resources else "{}",
            json.dumps(sorted(req.labels)),
            *randoms,
        ]
        keys = [k.alive(pool), k.seq(pool), k.epoch(pool), k.log(pool)]
        reply = await self._call(lambda: self._script(keys=keys, args=args))
        return json.loads(reply)

    @staticmethod
    def _selection(pool: str, doc: Mapping[str, Any], policy: str) -> Selection:
        picks = tuple(parse_node_hash(pool, p["id"], p["rec"]) for p in doc["picks"] or ())
        filtered = {str(k): int(v) for k, v in (doc["filtered"] or {}).items()}
        return Selection(
            pool=pool,
            picks=picks,
            considered=int(doc["considered"]),
            filtered=MappingProxyType(filtered),
            policy=policy,
            exhaustive=bool(doc["exhaustive"]),
        )

    async def select_nodes(
        self,
        pool: str,
        count: int = 1,
        requirements: Requirements | None = None,
        *,
        policy: str | None = None,
    ) -> Selection:
        """The placement script without admission: read only, picks with their records."""
        policy = policy or self.config.cache.policy
        doc = await self._run(pool, "select", "", count, requirements, policy)
        return self._selection(pool, doc, policy)

    async def place_job(
        self, pool: str, job_id: str, requirements: Requirements | None = None, *, policy: str | None = None
    ) -> Placement:
        """One script call: select (by ``policy``) and admit at the first candidate that accepts."""
        policy = policy or self.config.cache.policy
        doc = await self._run(pool, "place", job_id, PLACEMENT_CANDIDATES, requirements, policy)
        selection = self._selection(pool, doc, policy)
        rejected = tuple(doc["rejected"] or ())
        if doc["admitted"]:
            return Placement(
                job_id=job_id,
                pool=pool,
                node_id=str(doc["admitted"]),
                version=int(doc["version"]),
                rejected=rejected,
                selection=selection,
                data_age_s=0.0,
                reason=str(doc["reason"]),
            )
        return Placement(
            job_id=job_id,
            pool=pool,
            node_id=None,
            rejected=rejected,
            selection=selection,
            data_age_s=0.0,
            reason="all candidates rejected at admission" if rejected else selection.explain(),
        )

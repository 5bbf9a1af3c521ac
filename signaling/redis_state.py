"""The :class:`~signaling.state.SharedState` of many nodes, on one Redis.

Every node opens its own :class:`RedisState` on the same Redis and prefix.
Writes that must be one step for all nodes (claiming a customer, moving a
call's placement, counting a hit) are Lua scripts, which Redis runs one at a
time; every time they stamp comes from Redis ``TIME``, so the nodes' own clocks
never matter.

Keys, all under the prefix ``P`` (``vcounter:`` by default):

========================  ======  ============================================================
``P queue``               hash    session id -> queue entry (JSON)
``P queue:<business>``    zset    session ids of one business, scored ``priority * 1e10 + time``
``P agent:<id>``          string  an agent's presence (JSON), expiring with its TTL
``P agents``              set     agent ids that may have a presence key (pruned on read)
``P calls``               hash    session id -> node holding its media
``P count:<key>``         string  hits in the current window, expiring with it
``P handle_times[:<b>]``  list    the latest handling times, all businesses or one, capped
========================  ======  ============================================================

Scripts touch keys they build from the prefix (the business sets, presence
keys); on Redis Cluster make the prefix a hash tag, such as ``{vcounter}:``, so
that every key is in one slot.

Redis's Lua JSON encoder writes numbers with 14 significant digits, so the
queue's ordering time, and when each agent passed a customer (``passed_by``: an
object of agent id -> time), are kept in the JSON as decimal strings: a script
can rewrite an entry without rounding them.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import Collection
from typing import Any, cast

from redis.asyncio import Redis

from .state import (
    HANDLE_TIME_SAMPLES,
    AgentPresence,
    QueueEntry,
    check_ttl,
    entry_changes,
)

logger = logging.getLogger(__name__)

__all__ = ["RedisState", "check_client", "connect", "decode_entry", "encode_entry"]


def encode_entry(entry: QueueEntry) -> str:
    """A queue entry as the JSON that the hash and the scripts hold."""
    return json.dumps(
        {
            "session_id": entry.session_id,
            "business": entry.business,
            # a string: Lua's JSON encoder would round a number to 14 digits
            "enqueued_at": repr(float(entry.enqueued_at)),
            "priority": entry.priority,
            "node_id": entry.node_id,
            "passed_by": {str(a): repr(float(at)) for a, at in sorted(entry.passed_by.items())},
            "offered_to": entry.offered_to,
            "reachable": entry.reachable,
        }
    )


def decode_entry(raw: str) -> QueueEntry:
    data = json.loads(raw)
    passes = data["passed_by"] or {}
    if isinstance(passes, list):  # agent ids alone: passes of unknown time, over by now
        passes = dict.fromkeys(passes, 0.0)
    return QueueEntry(
        session_id=data["session_id"],
        business=data["business"],
        enqueued_at=float(data["enqueued_at"]),
        priority=int(data["priority"]),
        node_id=data["node_id"],
        passed_by={int(a): float(at) for a, at in passes.items()},
        offered_to=None if data["offered_to"] is None else int(data["offered_to"]),
        reachable=bool(data["reachable"]),
    )


def _encode_presence(presence: AgentPresence) -> str:
    return json.dumps(
        {
            "agent_id": presence.agent_id,
            "username": presence.username,
            "display_name": presence.display_name,
            "skills": sorted(presence.skills),
            "status": presence.status,
            "node_id": presence.node_id,
            "ready_since": presence.ready_since,
            "extra": presence.extra,
        }
    )


def _decode_presence(raw: str) -> AgentPresence:
    data = json.loads(raw)
    return AgentPresence(
        agent_id=int(data["agent_id"]),
        username=data["username"],
        display_name=data["display_name"],
        skills=frozenset(data["skills"]),
        status=data["status"],
        node_id=data["node_id"],
        ready_since=float(data["ready_since"]),
        extra=dict(data["extra"]),
    )


def _text(value: str | bytes | None) -> str | None:
    """A reply as text (the client decodes responses; this only narrows the type)."""
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str, **options: Any) -> Redis:
    """A client to ``url`` (``redis://host:port/db``) as the state and the bus need it.

    Replies are decoded, and no socket timeout is set: redis-py then sends each
    command under ``asyncio.wait_for``, which on Python 3.11 loses a
    cancellation that arrives just as the send completes, so a cancelled task
    would go on running. Dead connections are found by TCP keepalive instead.
    ``options`` go to ``Redis.from_url`` and win over these defaults.
    """
    keepalive = {
        getattr(socket, name): value
        for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
        if hasattr(socket, name)
    }
    defaults: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": None,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive,
    }
    return Redis.from_url(url, **{**defaults, **options})


def check_client(client: Redis, owner: str) -> None:
    """Refuse a client that does not decode replies; warn about a socket timeout (see :func:`connect`)."""
    options = client.get_connection_kwargs()
    if not options.get("decode_responses"):
        raise ValueError(f"{owner} needs a client made with decode_responses=True")
    if options.get("socket_timeout") is not None and sys.version_info < (3, 12):
        logger.warning(
            "%s: a Redis client with a socket timeout can lose task cancellations on "
            "Python 3.11; make it with signaling.redis_state.connect()",
            owner,
        )


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1 (Redis expiries are integers)."""
    return max(1, round(seconds * 1000))


# -- Lua -------------------------------------------------------------------------------

_LIB = """
local function now_text()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local function score(e)
  return e.priority * 1e10 + tonumber(e.enqueued_at)
end
-- the agent's pass on entry e holds at now: for cooldown seconds, or for good when negative
local function passed(e, agent, now, cooldown)
  local at = e.passed_by[tostring(agent)]
  if at == nil then return false end
  return cooldown < 0 or tonumber(at) + cooldown > now
end
-- byte order, as Python compares str (Lua's < follows the server's locale)
local function less(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function before(e, b)
  if b == nil then return true end
  if e.priority ~= b.priority then return e.priority < b.priority end
  local t, bt = tonumber(e.enqueued_at), tonumber(b.enqueued_at)
  if t ~= bt then return t < bt end
  return less(e.session_id, b.session_id)
end
"""

# KEYS[1] queue hash; ARGV[1] entry JSON, ARGV[2] prefix of the business sets
_ENQUEUE = (
    _LIB
    + """
local e = cjson.decode(ARGV[1])
if tonumber(e.enqueued_at) == 0 then e.enqueued_at = now_text() end
local old = redis.call('HGET', KEYS[1], e.session_id)
if old then
  local o = cjson.decode(old)
  if o.business ~= e.business then redis.call('ZREM', ARGV[2] .. o.business, e.session_id) end
end
local out = cjson.encode(e)
redis.call('HSET', KEYS[1], e.session_id, out)
redis.call('ZADD', ARGV[2] .. e.business, score(e), e.session_id)
return out
"""
)

# KEYS[1] queue hash; ARGV[1] session id, ARGV[2] changed fields (JSON), ARGV[3] set prefix
_UPDATE = (
    _LIB
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local e = cjson.decode(raw)
local business = e.business
for k, v in pairs(cjson.decode(ARGV[2])) do e[k] = v end
if e.business ~= business then redis.call('ZREM', ARGV[3] .. business, ARGV[1]) end
local out = cjson.encode(e)
redis.call('HSET', KEYS[1], ARGV[1], out)
redis.call('ZADD', ARGV[3] .. e.business, score(e), ARGV[1])
return out
"""
)

# KEYS[1] queue hash; ARGV[1] session id, ARGV[2] set prefix
_DEQUEUE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. cjson.decode(raw).business, ARGV[1])
return raw
"""

# KEYS[1] queue hash; ARGV[1] session id, ARGV[2] agent id
_CLAIM = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local e = cjson.decode(raw)
if e.offered_to ~= cjson.null or not e.reachable then return 0 end
e.offered_to = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(e))
return 1
"""

# KEYS[1] queue hash, KEYS[2..] the business sets of the agent's skills;
# ARGV[1] agent id, ARGV[2] node id that must hold the customer ('' = any),
# ARGV[3] seconds an agent's pass holds (negative: for good), on Redis's clock.
# Each set is walked in score order; an entry can only beat the best one found
# while its score is within a millisecond of it (the score is rounded, the
# comparison of (priority, time, session id) is exact).
_CLAIM_NEXT = (
    _LIB
    + """
local agent = tonumber(ARGV[1])
local now, cooldown = tonumber(now_text()), tonumber(ARGV[3])
local best, best_score
for i = 2, #KEYS do
  local start = 0
  local done = false
  while not done do
    local page = redis.call('ZRANGE', KEYS[i], start, start + 99, 'WITHSCORES')
    if #page == 0 then break end
    for j = 1, #page, 2 do
      local s = tonumber(page[j + 1])
      if best_score ~= nil and s > best_score + 0.001 then
        done = true
        break
      end
      local raw = redis.call('HGET', KEYS[1], page[j])
      if raw then
        local e = cjson.decode(raw)
        if e.offered_to == cjson.null and e.reachable and (ARGV[2] == '' or e.node_id == ARGV[2])
            and not passed(e, agent, now, cooldown) and before(e, best) then
          best = e
          best_score = s
        end
      end
    end
    start = start + 100
  end
end
if best == nil then return false end
best.offered_to = agent
local out = cjson.encode(best)
redis.call('HSET', KEYS[1], best.session_id, out)
return out
"""
)

# KEYS[1] queue hash; ARGV[1] session id, ARGV[2] agent id, ARGV[3] '1' to penalise
_RELEASE = (
    _LIB
    + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
local e = cjson.decode(raw)
local agent = tonumber(ARGV[2])
if e.offered_to == cjson.null or e.offered_to ~= agent then return false end
e.offered_to = cjson.null
if ARGV[3] == '1' then
  if type(e.passed_by) ~= 'table' then e.passed_by = {} end
  e.passed_by[ARGV[2]] = now_text()
end
local out = cjson.encode(e)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
"""
)

# KEYS[1] agents set; ARGV[1] prefix of the presence keys, ARGV[2] one agent id ('' = all)
_AGENTS = """
local ids
if ARGV[2] ~= '' then ids = {ARGV[2]} else ids = redis.call('SMEMBERS', KEYS[1]) end
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v else redis.call('SREM', KEYS[1], id) end
end
return out
"""

# KEYS[1] calls hash; ARGV[1] session id, ARGV[2] from node, ARGV[3] to node.
# Returns the node holding the call afterwards.
_MOVE_CALL = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if not holder or holder == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return ARGV[3]
end
return holder
"""

# KEYS[1] counter; ARGV[1] window ms
_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RedisState:
    """:class:`~signaling.state.SharedState` on Redis, one instance per node.

    ``client`` must decode responses (:func:`connect` makes one as it should
    be); the state closes it in :meth:`aclose` only if it made it (:meth:`from_url`).
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = "vcounter:",
        *,
        owns_client: bool = False,
        handle_time_samples: int = HANDLE_TIME_SAMPLES,
    ) -> None:
        check_client(client, "RedisState")
        self._r = client
        self._p = prefix
        self._owns_client = owns_client
        self._samples = handle_time_samples
        self._closed = False
        script = client.register_script
        self._enqueue = script(_ENQUEUE)
        self._update = script(_UPDATE)
        self._dequeue = script(_DEQUEUE)
        self._claim = script(_CLAIM)
        self._claim_next = script(_CLAIM_NEXT)
        self._release = script(_RELEASE)
        self._agents_script = script(_AGENTS)
        self._move_call = script(_MOVE_CALL)
        self._hit = script(_HIT)

    @classmethod
    def from_url(cls, url: str, prefix: str = "vcounter:", **kwargs: Any) -> RedisState:
        """A state on its own client (:func:`connect`) to ``url``, closed with the state."""
        return cls(connect(url), prefix, owns_client=True, **kwargs)

    @property
    def prefix(self) -> str:
        return self._p

    @property
    def client(self) -> Redis:
        return self._r

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- queue -------------------------------------------------------------------------

    async def enqueue(self, entry: QueueEntry) -> QueueEntry:
        raw = await self._enqueue(
            keys=[self._k("queue")], args=[encode_entry(entry), self._k("queue", "")]
        )
        return decode_entry(raw)

    async def update_entry(self, session_id: str, **changes: Any) -> QueueEntry | None:
        changed = json.loads(encode_entry(entry_changes(changes)))
        delta = {name: changed[name] for name in changes}
        raw = await self._update(
            keys=[self._k("queue")], args=[session_id, json.dumps(delta), self._k("queue", "")]
        )
        return None if raw is None else decode_entry(raw)

    async def dequeue(self, session_id: str) -> QueueEntry | None:
        raw = await self._dequeue(keys=[self._k("queue")], args=[session_id, self._k("queue", "")])
        return None if raw is None else decode_entry(raw)

    async def entry(self, session_id: str) -> QueueEntry | None:
        raw = _text(await self._r.hget(self._k("queue"), session_id))
        return None if raw is None else decode_entry(raw)

    async def queue(self, business: str | None = None) -> list[QueueEntry]:
        if business is None:
            raws = list((await self._r.hgetall(self._k("queue"))).values())
        else:
            ids = cast(list[str], await self._r.zrange(self._k("queue", business), 0, -1))
            raws = [r for r in await self._r.hmget(self._k("queue"), ids) if r] if ids else []
        return sorted((decode_entry(str(_text(r))) for r in raws), key=lambda e: e.sort_key)

    async def claim(self, session_id: str, agent_id: int) -> bool:
        return bool(await self._claim(keys=[self._k("queue")], args=[session_id, agent_id]))

    async def claim_next(
        self,
        agent_id: int,
        skills: Collection[str],
        *,
        node_id: str | None = None,
        cooldown_s: float | None = None,
    ) -> QueueEntry | None:
        if not skills:
            return None
        keys = [self._k("queue"), *(self._k("queue", b) for b in sorted(set(skills)))]
        cooldown = -1.0 if cooldown_s is None else max(0.0, cooldown_s)
        raw = await self._claim_next(keys=keys, args=[agent_id, node_id or "", repr(cooldown)])
        return None if raw is None else decode_entry(raw)

    async def release_offer(
        self, session_id: str, agent_id: int, *, penalise: bool = True
    ) -> QueueEntry | None:
        raw = await self._release(
            keys=[self._k("queue")], args=[session_id, agent_id, "1" if penalise else "0"]
        )
        return None if raw is None else decode_entry(raw)

    # -- agent presence ----------------------------------------------------------------

    async def put_agent(self, presence: AgentPresence, ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_ttl(ttl_s)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.set(
                self._k("agent", str(presence.agent_id)),
                _encode_presence(presence),
                px=None if ttl_s is None else _ms(ttl_s),
            )
            pipe.sadd(self._k("agents"), str(presence.agent_id))
            await pipe.execute()

    async def remove_agent(self, agent_id: int) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("agent", str(agent_id)))
            pipe.srem(self._k("agents"), str(agent_id))
            await pipe.execute()

    async def agent(self, agent_id: int) -> AgentPresence | None:
        raws = await self._agents_script(
            keys=[self._k("agents")], args=[self._k("agent", ""), str(agent_id)]
        )
        return _decode_presence(raws[0]) if raws else None

    async def agents(self) -> list[AgentPresence]:
        raws = await self._agents_script(keys=[self._k("agents")], args=[self._k("agent", ""), ""])
        return sorted((_decode_presence(r) for r in raws), key=lambda a: a.agent_id)

    # -- call placement ----------------------------------------------------------------

    async def set_call_node(self, session_id: str, node_id: str) -> None:
        await self._r.hset(self._k("calls"), session_id, node_id)

    async def call_node(self, session_id: str) -> str | None:
        return _text(await self._r.hget(self._k("calls"), session_id))

    async def move_call(self, session_id: str, from_node: str, to_node: str) -> str:
        return str(
            await self._move_call(keys=[self._k("calls")], args=[session_id, from_node, to_node])
        )

    async def clear_call(self, session_id: str) -> None:
        await self._r.hdel(self._k("calls"), session_id)

    # -- counters ----------------------------------------------------------------------

    async def hit(self, key: str, window_s: float) -> int:
        check_ttl(window_s, "window_s")
        return int(await self._hit(keys=[self._k("count", key)], args=[_ms(window_s)]))

    async def count(self, key: str) -> int:
        value = await self._r.get(self._k("count", key))
        return int(value) if value else 0

    async def reset(self, key: str) -> None:
        await self._r.delete(self._k("count", key))

    # -- handling-time statistics ------------------------------------------------------

    async def record_handle_time(self, business: str, seconds: float) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            for key in (self._k("handle_times"), self._k("handle_times", business)):
                pipe.lpush(key, repr(float(seconds)))
                pipe.ltrim(key, 0, self._samples - 1)
            await pipe.execute()

    async def average_handle_time(self, business: str | None = None) -> float | None:
        key = self._k("handle_times") if business is None else self._k("handle_times", business)
        samples = [float(v) for v in await self._r.lrange(key, 0, self._samples - 1)]
        return sum(samples) / len(samples) if samples else None

    # -- clock and lifecycle -----------------------------------------------------------

    async def now(self) -> float:
        seconds, micros = await self._r.time()
        return int(seconds) + int(micros) / 1_000_000

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._r.aclose()

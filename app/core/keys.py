"""Every Redis key sendbeat uses, built in this one module: the store's layout.

Layout 2 (``LAYOUT``). Every key carries a Redis Cluster hash tag (the part in braces),
so the keys a Lua script touches together share one hash slot, and the work is split
into ``shards`` (fixed when the store is created, kept in ``{p}:layout``) that a
Cluster spreads across its masters. ``{p}`` is the configured prefix
(``SENDBEAT_KEY_PREFIX``, default ``sendbeat``) and ``{p:s}`` the tag of shard ``s``
(``{p:s.n}`` where a suffix is needed to give each shard an equal part of the slot
range: ``_shard_tags``).

An event's keys and its execution records live in the event's shard, so claiming,
starting and finishing an execution is one atomic step in one slot. Where a key holds
an id, the id alone names its shard (``shard_of``: CRC-32 of the id, modulo the
shards); new ids are drawn until they land in the shard they belong to
(``new_id``): an event in the shard of its uid, an execution in its event's.

Global, one slot (``{p}``):

    {p}:layout                      HASH  version (2), shards
    {p}:projects                    ZSET  project id -> created (epoch s)
    {p}:project-names               HASH  project name -> project id
    {p}:project:{pid}               HASH  id, name, created_at
    {p}:project:{pid}:keys          SET   sha256 of each live API key
    {p}:apikey:{sha256}             HASH  project_id, prefix, created_at
    {p}:project:{pid}:event-seq     STRING the last creation sequence number
    {p}:beat:heartbeat              STRING epoch s (Redis' clock) of the last beat tick
    {p}:beat:wake                   LIST  at most one token: an event was (re)scheduled,
                                          a sleeping beat looks again at once
    {p}:batches                     ZSET  batch id -> when it began (epoch ms): batch creates
                                          spanning shards on Redis Cluster, until committed
    {p}:batch:{bid}                 HASH  state (staging, commit, undoing) and plan (JSON: the
                                          events' ids, uids, numbers and due times)
    {p}:metrics:lateness            HASH  dispatch lateness histogram: bucket upper bound
                                          ("0.05" ... "+Inf") -> observations in that bucket
                                          alone (not cumulative), plus "count" and "sum"
    {p}:ratelimit:...               the rate limiter's counters (Flask-Limiter on the
                                          ``limits`` Redis storage), one per API key and
                                          window, expiring with their window

Per shard ``s`` (``{p:s}``; a project's indexes are split by the shard of each uid):

    {p:s}:due                       ZSET  event id -> next run (epoch s); absent when
                                          suspended or done
    {p:s}:pending                   ZSET  instance id -> queued at (epoch ms): queued, publish
                                          not yet confirmed (a broker other than this Redis)
    {p:s}:retry                     ZSET  instance id -> when its retry is due (epoch ms)
    {p:s}:running                   ZSET  instance id -> end of its worker's lease (epoch ms)
    {p:s}:replay                    ZSET  event id -> when beat next looks at its replay
                                          list (epoch ms)
    {p:s}:project:{pid}:uids        HASH  event uid -> event id
    {p:s}:project:{pid}:events      ZSET  event id -> creation sequence number, for listing
    {p:s}:project:{pid}:message-uids ZSET send_message uid -> when it was used (epoch ms);
                                          trimmed to the retention as uids are added
    {p:s}:metrics:executions        HASH  execution status -> records that reached it
    {p:s}:metrics:send-latency      HASH  send latency histogram, as lateness

By id (in the shard the id names):

    {p:s}:event:{eid}               HASH  the event (see ``app.core.store``): small fields
                                          only, so Redis keeps it in its compact encoding
    {p:s}:event:{eid}:metadata      STRING the event's send_message request (JSON)
    {p:s}:event:{eid}:instances     ZSET  instance id -> scheduled_for (epoch s), newest last;
                                          expires after the retention once the event is deleted
    {p:s}:event:{eid}:inflight      ZSET  instance id -> when its record expires (epoch ms):
                                          the executions queued, running or retrying (the
                                          overlap policy; what a pause or delete cancels)
    {p:s}:event:{eid}:replay        LIST  past occurrences to send one at a time, in order
                                          (a resume's catch-up, a backfill): "trigger overlap
                                          nominal at" each (replay.lua)
    {p:s}:instance:{iid}            HASH  one execution record (§7), expires after the retention

Times that decide something (due, leases, retries, the pending sweep) are read from
the Redis server's clock (``TIME``, inside the scripts), never from a process's own.
Every key a Lua script touches is built here and passed to it in ``KEYS``.

Layout 1 (before hash tags: the same names as ``{p}:...`` without braces, one shard)
is moved to this one by ``flask --app app store migrate`` (``app.core.layout``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import key_slot

from app.core.records import new_id

LAYOUT = 2  # the key layout this code reads and writes
MAX_SHARDS = 1024
SLOTS = 16384  # Redis Cluster's hash slots


@cache
def _shard_tags(prefix: str, shards: int) -> tuple[str, ...]:
    """The hash tag of each shard: ``prefix:s``, or ``prefix:s.n`` with the first ``n``
    that puts shard ``s`` in the ``s``-th equal part of the slot range. A cluster whose
    masters hold equal runs of slots (as ``redis-cli --cluster create`` makes them) then
    holds equal numbers of shards, where plain names would fall unevenly."""
    tags = []
    for shard in range(shards):
        low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
        tag, n = f"{prefix}:{shard}", 0
        while not low <= key_slot(tag.encode()) < high:
            n += 1
            tag = f"{prefix}:{shard}.{n}"
        tags.append(tag)
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    prefix: str = "sendbeat"
    shards: int = 1

    # -- shards and ids ------------------------------------------------------------

    def shard_of(self, id_: str) -> int:
        """The shard whose slot holds the keys of this event or execution id."""
        return zlib.crc32(id_.encode()) % self.shards if self.shards > 1 else 0

    def uid_shard(self, project_id: str, uid: str) -> int:
        """The shard of a project's uid: its event (or send_message execution) lives there,
        with the index that keeps the uid unique."""
        return self.shard_of(f"{project_id}:{uid}")

    def new_id(self, shard: int) -> str:
        """A fresh id whose keys fall in ``shard`` (drawn again until they do: about
        ``shards`` draws of a few microseconds)."""
        while True:
            candidate = new_id()
            if self.shard_of(candidate) == shard:
                return candidate

    def all_shards(self) -> range:
        return range(self.shards)

    def _global(self, rest: str) -> str:
        return f"{{{self.prefix}}}:{rest}"

    def _shard(self, shard: int, rest: str) -> str:
        return f"{{{_shard_tags(self.prefix, self.shards)[shard]}}}:{rest}"

    def _by_id(self, id_: str, rest: str) -> str:
        return self._shard(self.shard_of(id_), rest)

    # -- global --------------------------------------------------------------------

    @property
    def layout(self) -> str:
        return self._global("layout")

    @property
    def projects(self) -> str:
        return self._global("projects")

    @property
    def project_names(self) -> str:
        return self._global("project-names")

    def project(self, project_id: str) -> str:
        return self._global(f"project:{project_id}")

    def project_keys(self, project_id: str) -> str:
        return self._global(f"project:{project_id}:keys")

    def api_key(self, digest: str) -> str:
        return self._global(f"apikey:{digest}")

    def event_sequence(self, project_id: str) -> str:
        return self._global(f"project:{project_id}:event-seq")

    @property
    def beat_wake(self) -> str:
        return self._global("beat:wake")

    @property
    def beat_heartbeat(self) -> str:
        return self._global("beat:heartbeat")

    @property
    def batches(self) -> str:
        return self._global("batches")

    def batch(self, batch_id: str) -> str:
        return self._global(f"batch:{batch_id}")

    @property
    def metrics_lateness(self) -> str:
        return self._global("metrics:lateness")

    @property
    def rate_limits(self) -> str:
        """The prefix of the rate limiter's keys (it builds the rest itself)."""
        return self._global("ratelimit")

    # -- per shard -----------------------------------------------------------------

    def due(self, shard: int) -> str:
        return self._shard(shard, "due")

    def pending(self, shard: int) -> str:
        return self._shard(shard, "pending")

    def retry(self, shard: int) -> str:
        return self._shard(shard, "retry")

    def running(self, shard: int) -> str:
        return self._shard(shard, "running")

    def replay(self, shard: int) -> str:
        return self._shard(shard, "replay")

    def uids(self, project_id: str, shard: int) -> str:
        return self._shard(shard, f"project:{project_id}:uids")

    def project_events(self, project_id: str, shard: int) -> str:
        return self._shard(shard, f"project:{project_id}:events")

    def message_uids(self, project_id: str, shard: int) -> str:
        return self._shard(shard, f"project:{project_id}:message-uids")

    def metrics_executions(self, shard: int) -> str:
        return self._shard(shard, "metrics:executions")

    def metrics_send_latency(self, shard: int) -> str:
        return self._shard(shard, "metrics:send-latency")

    # -- by id ---------------------------------------------------------------------

    def event(self, event_id: str) -> str:
        return self._by_id(event_id, f"event:{event_id}")

    def event_metadata(self, event_id: str) -> str:
        return self._by_id(event_id, f"event:{event_id}:metadata")

    def event_instances(self, event_id: str) -> str:
        return self._by_id(event_id, f"event:{event_id}:instances")

    def event_inflight(self, event_id: str) -> str:
        return self._by_id(event_id, f"event:{event_id}:inflight")

    def event_replay(self, event_id: str) -> str:
        return self._by_id(event_id, f"event:{event_id}:replay")

    def instance(self, instance_id: str) -> str:
        return self._by_id(instance_id, f"instance:{instance_id}")

"""Every Redis key sendbeat uses, built in this one module.

Key schema (``{p}`` is the configured prefix, ``SENDBEAT_KEY_PREFIX``, default
``sendbeat``):

    {p}:projects                    ZSET  project id -> created (epoch s)
    {p}:project-names               HASH  project name -> project id
    {p}:project:{pid}               HASH  id, name, created_at
    {p}:project:{pid}:keys          SET   sha256 of each live API key
    {p}:apikey:{sha256}             HASH  project_id, prefix, created_at
    {p}:project:{pid}:uids          HASH  event uid -> event id
    {p}:project:{pid}:events        ZSET  event id -> creation sequence number, for listing
    {p}:project:{pid}:event-seq     STRING the last creation sequence number
    {p}:project:{pid}:message-uids  ZSET  send_message uid -> when it was used (epoch ms);
                                          trimmed to the retention as uids are added
    {p}:event:{eid}                 HASH  the event (see ``app.core.store``): small fields
                                          only, so Redis keeps it in its compact encoding
    {p}:event:{eid}:metadata        STRING the event's send_message request (JSON)
    {p}:event:{eid}:instances       ZSET  instance id -> scheduled_for (epoch s), newest last;
                                          expires after the retention once the event is deleted
    {p}:event:{eid}:inflight        ZSET  instance id -> when its record expires (epoch ms):
                                          the executions queued, running or retrying (the
                                          overlap policy; what a pause or delete cancels)
    {p}:due                         ZSET  event id -> next run (epoch s); absent when
                                          suspended or done
    {p}:instance:{iid}              HASH  one execution record (§7), expires after the retention
    {p}:pending                     ZSET  instance id -> queued at (epoch ms): queued, publish
                                          not yet confirmed (a broker other than this Redis)
    {p}:retry                       ZSET  instance id -> when its retry is due (epoch ms)
    {p}:running                     ZSET  instance id -> end of its worker's lease (epoch ms)
    {p}:beat:heartbeat              STRING epoch s (Redis' clock) of the last beat tick
    {p}:beat:wake                   LIST  at most one token: an event was (re)scheduled,
                                          a sleeping beat looks again at once
    {p}:metrics:executions          HASH  execution status -> records that reached it
    {p}:metrics:lateness            HASH  dispatch lateness histogram: bucket upper bound
                                          ("0.05" ... "+Inf") -> observations in that bucket
                                          alone (not cumulative), plus "count" and "sum"
    {p}:metrics:send-latency        HASH  send latency histogram, the same fields
    {p}:ratelimit:...               the rate limiter's counters (Flask-Limiter on the
                                          ``limits`` Redis storage), one per API key and
                                          window, expiring with their window

Times that decide something (due, leases, retries, the pending sweep) are read from
the Redis server's clock (``TIME``, inside the scripts), never from a process's own.
Every key a Lua script touches is built here and passed to it in ``KEYS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "sendbeat"

    @property
    def projects(self) -> str:
        return f"{self.prefix}:projects"

    @property
    def project_names(self) -> str:
        return f"{self.prefix}:project-names"

    def project(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}"

    def project_keys(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}:keys"

    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def uids(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}:uids"

    def project_events(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}:events"

    def event_sequence(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}:event-seq"

    def message_uids(self, project_id: str) -> str:
        return f"{self.prefix}:project:{project_id}:message-uids"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}"

    def event_metadata(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}:metadata"

    def event_instances(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}:instances"

    def event_inflight(self, event_id: str) -> str:
        return f"{self.prefix}:event:{event_id}:inflight"

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    def instance(self, instance_id: str) -> str:
        return f"{self.prefix}:instance:{instance_id}"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def retry(self) -> str:
        return f"{self.prefix}:retry"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def beat_wake(self) -> str:
        return f"{self.prefix}:beat:wake"

    @property
    def beat_heartbeat(self) -> str:
        return f"{self.prefix}:beat:heartbeat"

    @property
    def metrics_executions(self) -> str:
        return f"{self.prefix}:metrics:executions"

    @property
    def metrics_lateness(self) -> str:
        return f"{self.prefix}:metrics:lateness"

    @property
    def metrics_send_latency(self) -> str:
        return f"{self.prefix}:metrics:send-latency"

    @property
    def rate_limits(self) -> str:
        """The prefix of the rate limiter's keys (it builds the rest itself)."""
        return f"{self.prefix}:ratelimit"

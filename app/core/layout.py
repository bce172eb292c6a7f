"""The store's key layout: which one a store holds, opening a store by it, and moving a
store written by layout 1 to layout 2 (``app.core.keys``).

Every process checks its store when it starts (``check_layout``): ``{p}:layout`` holds
the layout version and the shard count, written when the store is new; a process
refuses a store whose layout it does not know — layout 1 keys, a migration still
running or cut short, a later version — or whose shard count differs from its own
``SENDBEAT_STORE_SHARDS``, with a ``LayoutError`` that says what to run or set.

``migrate`` (``flask --app app store migrate``) renames every layout 1 key to its
layout 2 name, one key at a time (RENAME keeps values and expiries), and marks the store
layout 2 only when all are moved: it is idempotent and safe to run again after a crash.
Its ids were not drawn for shards, so a migrated store has one shard.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import WatchError
from redis.exceptions import RedisError, ResponseError

from app.core.keys import LAYOUT, Keys

log = logging.getLogger("sendbeat.store")

MIGRATING = "migrating"  # the version field while a migration runs
MIGRATE_COMMAND = "flask --app app store migrate"
EX_CONFIG = 78  # the exit status of a process that refused its store (sysexits.h)


class LayoutError(Exception):
    """The store's layout is not one this code reads; the message says what to do."""


@dataclass(frozen=True)
class Layout:
    version: str  # "" for an empty store, "1" for layout 1 keys
    shards: int = 1


def read_layout(redis: Any, prefix: str) -> Layout:
    raw = redis.hgetall(Keys(prefix).layout)
    if raw:
        return Layout(raw.get("version", ""), int(raw.get("shards", 1)))
    # One key at a time: on a Cluster they would be in different slots.
    if any(redis.exists(f"{prefix}:{name}") for name in _LAYOUT_1_MARKS):
        return Layout("1")
    return Layout("")


def check_layout(redis: Any, keys: Keys) -> None:
    """Make sure the store holds the layout ``keys`` are for — layout 2 with as many
    shards — writing it down when the store is new; LayoutError (saying what to run or
    set) when it holds another. RedisError when Redis does not answer."""
    while True:
        layout = read_layout(redis, keys.prefix)
        if layout.version == str(LAYOUT) and layout.shards == keys.shards:
            return
        if layout.version == str(LAYOUT):
            raise LayoutError(
                f"The store {keys.prefix!r} has {layout.shards} shard(s), fixed when it was "
                f"created; set SENDBEAT_STORE_SHARDS={layout.shards} in every process."
            )
        if layout.version:
            raise LayoutError(_refusal(keys.prefix, layout))
        # A new store: the first process to get here writes its layout down.
        with redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(keys.layout)
                if pipe.exists(keys.layout):
                    continue  # another process was first: read what it wrote
                pipe.multi()
                pipe.hset(keys.layout, mapping={"version": LAYOUT, "shards": keys.shards})
                pipe.execute()
            except WatchError:
                continue
        log.info("new store %r: key layout %s, %s shard(s)", keys.prefix, LAYOUT, keys.shards)
        return


def refusal(redis: Any, keys: Keys, process: str) -> str | None:
    """Why ``process`` must not start on this store (``check_layout``'s LayoutError), or
    None. Redis not answering is no reason: the process starts and waits for it, and the
    check is made at its next start."""
    try:
        check_layout(redis, keys)
    except LayoutError as exc:
        log.critical("%s: %s", process, exc)
        return str(exc)
    except RedisError as exc:
        log.warning("%s: could not check the store's key layout: %s", process, exc)
    return None


def _refusal(prefix: str, layout: Layout) -> str:
    if layout.version == "1":
        return (
            f"The store {prefix!r} holds keys of layout 1 (sendbeat before hash-tagged keys); "
            f"this version reads layout {LAYOUT}. Stop beat, then run `{MIGRATE_COMMAND}` "
            "once (docs/operations.md, 'Upgrading the store')."
        )
    if layout.version == MIGRATING:
        return (
            f"The store {prefix!r} is being migrated, or a migration stopped before it "
            f"ended; run `{MIGRATE_COMMAND}` (again) to finish it."
        )
    return (
        f"The store {prefix!r} has key layout {layout.version}, which this version of "
        f"sendbeat does not know (it reads layout {LAYOUT}): run a version that does."
    )


# -- layout 1 -> 2 -------------------------------------------------------------------------

# Keys only a layout 1 store has (a store with any project or event has one of them).
_LAYOUT_1_MARKS = ("projects", "project-names", "due", "beat:heartbeat")

_ID = r"([^:]+)"
# layout 1 name (after "{prefix}:") -> its layout 2 name; one shard, so shard 0.
_RENAMES: list[tuple[re.Pattern[str], Callable[[Keys, re.Match[str]], str]]] = [
    (re.compile(rf"project:{_ID}:uids"), lambda k, m: k.uids(m[1], 0)),
    (re.compile(rf"project:{_ID}:events"), lambda k, m: k.project_events(m[1], 0)),
    (re.compile(rf"project:{_ID}:message-uids"), lambda k, m: k.message_uids(m[1], 0)),
    (re.compile(rf"project:{_ID}:event-seq"), lambda k, m: k.event_sequence(m[1])),
    (re.compile(rf"project:{_ID}:keys"), lambda k, m: k.project_keys(m[1])),
    (re.compile(rf"project:{_ID}"), lambda k, m: k.project(m[1])),
    (re.compile(rf"apikey:{_ID}"), lambda k, m: k.api_key(m[1])),
    (re.compile(rf"event:{_ID}:metadata"), lambda k, m: k.event_metadata(m[1])),
    (re.compile(rf"event:{_ID}:instances"), lambda k, m: k.event_instances(m[1])),
    (re.compile(rf"event:{_ID}:inflight"), lambda k, m: k.event_inflight(m[1])),
    (re.compile(rf"event:{_ID}"), lambda k, m: k.event(m[1])),
    (re.compile(rf"instance:{_ID}"), lambda k, m: k.instance(m[1])),
    (re.compile(r"projects"), lambda k, m: k.projects),
    (re.compile(r"project-names"), lambda k, m: k.project_names),
    (re.compile(r"due"), lambda k, m: k.due(0)),
    (re.compile(r"pending"), lambda k, m: k.pending(0)),
    (re.compile(r"retry"), lambda k, m: k.retry(0)),
    (re.compile(r"running"), lambda k, m: k.running(0)),
    (re.compile(r"beat:heartbeat"), lambda k, m: k.beat_heartbeat),
    (re.compile(r"beat:wake"), lambda k, m: k.beat_wake),
    (re.compile(r"metrics:executions"), lambda k, m: k.metrics_executions(0)),
    (re.compile(r"metrics:lateness"), lambda k, m: k.metrics_lateness),
    (re.compile(r"metrics:send-latency"), lambda k, m: k.metrics_send_latency(0)),
    (re.compile(r"ratelimit(.*)"), lambda k, m: k.rate_limits + m[1]),
]


def layout_2_name(keys: Keys, old: str) -> str | None:
    """The layout 2 name of a layout 1 key (None: not one of sendbeat's)."""
    rest = old.removeprefix(f"{keys.prefix}:")
    for pattern, rename in _RENAMES:
        found = pattern.fullmatch(rest)
        if found:
            return rename(keys, found)
    return None


@dataclass
class Migration:
    moved: int = 0
    skipped: list[str] | None = None  # keys under the prefix that are not sendbeat's
    already: bool = False  # the store was layout 2 before


def migrate(redis: Any, prefix: str) -> Migration:
    """Move a layout 1 store (or an empty one) to layout 2 with one shard. Marks the store
    "migrating" first, so no process starts on it half moved, and layout 2 at the end."""
    keys = Keys(prefix, shards=1)
    layout = read_layout(redis, prefix)
    if layout.version == str(LAYOUT):
        return Migration(already=True)
    if layout.version not in ("", "1", MIGRATING):
        raise LayoutError(_refusal(prefix, layout))
    redis.hset(keys.layout, "version", MIGRATING)
    result = Migration(skipped=[])
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":*"
    for old in list(redis.scan_iter(match=pattern, count=1000)):
        new = layout_2_name(keys, old)
        if new is None:
            result.skipped.append(old)  # type: ignore[union-attr]
            continue
        try:
            redis.rename(old, new)
        except ResponseError:  # "no such key": it expired since the scan
            continue
        result.moved += 1
    redis.hset(keys.layout, mapping={"version": LAYOUT, "shards": 1})
    return result

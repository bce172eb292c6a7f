-- replay.lua: send the next past occurrence waiting in each event's replay list (a
-- resume's catch-up, a backfill), one per event and call, in order.
--
-- An occurrence whose event has overlap "skip" waits while an execution of the event is
-- in flight (queued, running or retrying): the list is sent one after another. Each
-- event is looked at again ``pace`` later while its list holds more, so a long list
-- never bursts. A paused or deleted event's list is dropped (a pause drops it too).
--
-- KEYS[1]  {p:s}:replay ZSET   event id -> when to look at its list next (epoch ms)
-- KEYS[2]  the broker's queue LIST when the broker is this Redis, else {p:s}:pending
--          (as in claim.lua)
-- KEYS[3]  {p:s}:metrics:executions HASH
-- KEYS[4..] per event, from its key base b: b the event HASH, b+1 its :inflight ZSET,
--          b+2 its :instances ZSET, b+3 its :replay LIST, b+4 the new instance HASH
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  retention (seconds)
-- ARGV[3]  "push" or "pending"
-- ARGV[4..6] "push": the task message template, its separator and room
-- ARGV[7]  pace (ms)
-- ARGV[8]  the events: records separated by \30, each "event id \31 instance id \31 base"
-- Returns  the instance ids queued

local now = clock(ARGV[1])
local stamp = math.floor(now / 1000)
local retention = tonumber(ARGV[2])
local push = ARGV[3] == 'push'
local pace = tonumber(ARGV[7])
local out, entries = {}, {}

for record in string.gmatch(ARGV[8], '[^\30]+') do
  local eid, iid, base = string.match(record, '^([^\31]*)\31([^\31]*)\31([^\31]*)$')
  base = tonumber(base)
  local event, inflight, instances = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  local list, key = KEYS[base + 3], KEYS[base + 4]
  local info = redis.call('HMGET', event, 'uid', 'project_id', 'status')
  local head = redis.call('LINDEX', list, 0)
  if not head or not info[1] or info[3] == 'suspend' then
    redis.call('DEL', list)
    redis.call('ZREM', KEYS[1], eid)
  else
    local trigger, overlap, nominal, at = string.match(head, '^(%S+) (%S+) (%S+) (%S+)$')
    if overlap ~= 'allow' and live_count(inflight, now) > 0 then
      redis.call('ZADD', KEYS[1], now + pace, eid)
    else
      redis.call('LPOP', list)
      redis.call('HSET', key, 'event_id', eid, 'event_uid', info[1], 'project_id', info[2],
        'trigger', trigger, 'status', 'queued', 'scheduled_for', at, 'enqueued_at', stamp)
      if nominal ~= at then
        redis.call('HSET', key, 'nominal_for', nominal)
      end
      redis.call('EXPIRE', key, retention)
      redis.call('ZADD', instances, at, iid)
      redis.call('ZADD', inflight, now + retention * 1000, iid)
      if push then
        entries[#entries + 1] = iid .. ' ' .. eid
      else
        redis.call('ZADD', KEYS[2], now, iid)
      end
      redis.call('HINCRBY', KEYS[3], 'queued', 1)
      out[#out + 1] = iid
      if redis.call('LLEN', list) > 0 then
        redis.call('ZADD', KEYS[1], now + pace, eid)
      else
        redis.call('ZREM', KEYS[1], eid)
      end
    end
  end
end
if push then
  push_tasks(KEYS[2], ARGV[4], ARGV[5], ARGV[6], entries, now)
end
return out

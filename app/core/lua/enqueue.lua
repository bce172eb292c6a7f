-- enqueue.lua: record an execution the API asked for (a manual trigger or send_message)
-- and hand it to the broker, in one atomic step.
--
-- Either everything is written or nothing: the overlap check and the record of a
-- trigger cannot be split by a second trigger or by beat, and a send_message uid is
-- taken together with its record, never alone.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the new execution record
-- KEYS[2]  the broker's queue LIST when the broker is this Redis (ARGV[4] goes onto it,
--          prelude.lua's push_tasks), else {p}:pending: the caller publishes and then clears it; any beat
--          publishes what stays there past a grace period (a web that died in between)
-- KEYS[3]  {p}:metrics:executions HASH status -> count
-- trigger "manual": KEYS[4] the event HASH, KEYS[5] its :inflight ZSET, KEYS[6] its
--          :instances ZSET
-- trigger "api":    KEYS[4] the project's :message-uids ZSET (uid -> when used, ms)
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  retention (seconds)
-- ARGV[3]  the instance id
-- ARGV[4]  the task entry (pushed onto KEYS[2]), or "" when KEYS[2] is {p}:pending
-- ARGV[5]  trigger: "manual" or "api"
-- ARGV[6]  the project id
-- manual:  ARGV[7] the event id, ARGV[8] the event uid
-- api:     ARGV[7] the message uid ("" for none), ARGV[8] the arguments (JSON)
-- ARGV[9..11] with a task entry: the message template, its separator and room
-- Returns  {"queued", now (ms)}; {"gone"} (the event was deleted), {"conflict"} (overlap
--          "skip" and an execution is in flight) or {"taken"} (the uid was used)

local now = clock(ARGV[1])
local stamp = math.floor(now / 1000)
local retention = tonumber(ARGV[2])
local id, trigger = ARGV[3], ARGV[5]
local fields = {'project_id', ARGV[6], 'trigger', trigger, 'status', 'queued',
  'scheduled_for', stamp, 'enqueued_at', stamp}

if trigger == 'manual' then
  local overlap = redis.call('HMGET', KEYS[4], 'uid', 'overlap')
  if not overlap[1] then
    return {'gone'}
  end
  if overlap[2] ~= 'allow' and live_count(KEYS[5], now) > 0 then
    return {'conflict'}
  end
  redis.call('ZADD', KEYS[5], now + retention * 1000, id)
  redis.call('ZADD', KEYS[6], stamp, id)
  for _, v in ipairs({'event_id', ARGV[7], 'event_uid', ARGV[8]}) do
    fields[#fields + 1] = v
  end
else
  if ARGV[7] ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - retention * 1000)
    if redis.call('ZADD', KEYS[4], 'NX', now, ARGV[7]) == 0 then
      return {'taken'}
    end
  end
  fields[#fields + 1] = 'payload'
  fields[#fields + 1] = ARGV[8]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], retention)
if ARGV[4] ~= '' then
  push_tasks(KEYS[2], ARGV[9], ARGV[10], ARGV[11], {ARGV[4]}, now)
else
  redis.call('ZADD', KEYS[2], now, id)
end
redis.call('HINCRBY', KEYS[3], 'queued', 1)
return {'queued', now}

-- cancel.lua: stop an event's executions when it is paused or deleted.
--
-- Run inside the MULTI of the pause or delete (app.core.store), whose WATCH on the
-- event's :inflight ZSET makes KEYS[5..] exactly its members. A record still queued or
-- retrying is cancelled here; one a worker is sending is marked, and its worker stops
-- before its next recipient (hold.lua) and records it cancelled: nothing is sent after
-- the pause or delete answered.
--
-- KEYS[1]  {p}:pending   KEYS[2]  {p}:retry   KEYS[3]  the event's :inflight ZSET
-- KEYS[4]  {p}:metrics:executions HASH status -> count
-- KEYS[5..] the instance HASHes of the in-flight executions
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  why: "paused" or "deleted"
-- ARGV[3..] their instance ids, in the order of KEYS[5..]
-- Returns  the ids cancelled here

local now = clock(ARGV[1])
local out = {}
for i = 5, #KEYS do
  local record, id = KEYS[i], ARGV[i - 2]
  local status = redis.call('HGET', record, 'status')
  if status == 'queued' or status == 'retrying' then
    redis.call('HSET', record, 'status', 'cancelled', 'completed_at', math.floor(now / 1000),
      'error', 'The scheduled event was ' .. ARGV[2] .. '.')
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
    out[#out + 1] = id
  elseif status == 'running' then
    redis.call('HSET', record, 'stop', ARGV[2])
  else
    redis.call('ZREM', KEYS[3], id)  -- it ended, or its record expired
  end
end
return out

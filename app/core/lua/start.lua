-- start.lua: move an execution record to "running" for the worker that will send it.
--
-- Broker redeliveries and duplicate publishes land here too: only a record that is
-- queued or retrying, or running under a lease that has run out (its worker died),
-- may start; a record that already finished is never sent again.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- KEYS[2]  {p}:running          ZSET instance id -> lease end; beat publishes again what
--                               stays here past its lease (the worker died)
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  lease (seconds): how long this worker may hold the record before another takes over
-- ARGV[3]  the instance id
-- Returns  {"start", attempts} when the caller must send it; otherwise {status}
--          ("succeeded", "running", ...) or {"gone"} when the record does not exist.

local now = tonumber(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return {'gone'}
end
local held_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if status == 'queued' or status == 'retrying' or (status == 'running' and held_until < now) then
  local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  local lease_until = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'status', 'running', 'lease_until', lease_until)
  redis.call('ZADD', KEYS[2], lease_until, ARGV[3])
  if not redis.call('HGET', KEYS[1], 'started_at') then
    redis.call('HSET', KEYS[1], 'started_at', now)
  end
  return {'start', attempts}
end
if status == 'running' then
  -- A copy arriving while the lease is live: it stands down, but the record must stay
  -- watched (beat may have just taken it out of {p}:running to publish this copy), or a
  -- worker that then dies would leave it running for ever.
  redis.call('ZADD', KEYS[2], held_until, ARGV[3])
end
return {status}

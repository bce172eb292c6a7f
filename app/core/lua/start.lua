-- start.lua: give an execution to the worker that will send it, with a lease and a
-- fencing token.
--
-- Broker redeliveries and duplicate publishes land here too: only a record that is
-- queued, retrying (and due), or running under a lease that has run out (its worker
-- died or stalled) may start; a record that already ended is never sent again. Each
-- start is a new attempt, and the attempt number is the token every later write of
-- this worker must show (prelude.lua's holds()). An execution taken over more than
-- retries + 2 times ends failed: whatever kills its workers would kill the next one.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- KEYS[2]  {p}:running          ZSET instance id -> lease end (ms)
-- KEYS[3]  {p}:retry            ZSET instance id -> retry due (ms)
-- KEYS[4]  {p}:pending          ZSET instance id -> queued at (ms): it reached a worker,
--                               so its publish needs no repeating
-- KEYS[5]  {p}:metrics:executions HASH status -> count
-- KEYS[6]  the event HASH, KEYS[7] its :inflight ZSET, KEYS[8] its :metadata STRING —
--          only for an event's execution
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  lease (ms): how long this worker may hold the record before another takes over
-- ARGV[3]  the instance id
-- ARGV[4]  retention (seconds)
-- ARGV[5]  the retry budget of an execution without an event (send_message)
-- Returns  {"start", attempt (the token), now (ms), the event's retries and metadata
--          ("" and "" without an event), the record's fields and values...} when the
--          caller must send it: what it needs to send, in this one call;
--          {"failed"} or {"cancelled"} when it ended here; {"waiting"} for a retry whose
--          time has not come; otherwise {status} ("succeeded", "running", ...), or
--          {"gone"} when the record does not exist.

local now = clock(ARGV[1])
local record, id = KEYS[1], ARGV[3]
local status = redis.call('HGET', record, 'status')
if not status then
  return {'gone'}
end
redis.call('ZREM', KEYS[4], id)

local function finish(final, error)
  redis.call('HSET', record, 'status', final, 'error', error,
    'completed_at', math.floor(now / 1000))
  redis.call('HDEL', record, 'lease_until')
  redis.call('EXPIRE', record, tonumber(ARGV[4]))
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if KEYS[7] then
    redis.call('ZREM', KEYS[7], id)
  end
  redis.call('HINCRBY', KEYS[5], final, 1)
  return {final}
end

local held_until = tonumber(redis.call('HGET', record, 'lease_until') or '0')
if status == 'retrying' then
  local due = redis.call('ZSCORE', KEYS[3], id)
  if due and tonumber(due) > now then
    return {'waiting'}  -- an early copy: the retry is published when its backoff ends
  end
elseif status == 'running' and held_until >= now then
  -- A copy arriving while the lease is live: it stands down, but the record must stay
  -- watched (beat may have just taken it out of {p}:running to publish this copy), or a
  -- worker that then dies would leave it running for ever.
  redis.call('ZADD', KEYS[2], held_until, id)
  return {status}
elseif status ~= 'queued' and status ~= 'running' then
  return {status}
end

if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 0 then
  return finish('cancelled', 'The scheduled event was deleted.')
end
local stop = redis.call('HGET', record, 'stop')
if stop then
  return finish('cancelled', 'The scheduled event was ' .. stop .. '.')
end
if status == 'running' then
  local lost = redis.call('HINCRBY', record, 'lost', 1)
  local retries = tonumber(ARGV[5])
  if KEYS[6] then
    retries = tonumber(redis.call('HGET', KEYS[6], 'retries') or retries)
  end
  if lost > retries + 2 then
    return finish('failed', 'worker lost ' .. lost .. ' times')
  end
end
local attempt = redis.call('HINCRBY', record, 'attempts', 1)
local lease_until = now + tonumber(ARGV[2])
redis.call('HSET', record, 'status', 'running', 'lease_until', lease_until)
redis.call('HSETNX', record, 'started_at', math.floor(now / 1000))
redis.call('ZADD', KEYS[2], lease_until, id)
redis.call('ZREM', KEYS[3], id)
local event_retries, event_metadata = '', ''
if KEYS[6] then
  event_retries = redis.call('HGET', KEYS[6], 'retries') or ''
  event_metadata = redis.call('GET', KEYS[8]) or ''
end
local out = {'start', attempt, now, event_retries, event_metadata}
for _, value in ipairs(redis.call('HGETALL', record)) do
  out[#out + 1] = value
end
return out

-- prelude.lua: put before every script when it is loaded (app.core.scripts), so the
-- scripts share one clock and one fence.

-- The one clock: the Redis server's, in whole milliseconds, so no process's skewed
-- clock can decide anything. A caller may pin it (tests do, through Store(clock=...))
-- by passing the time instead of "".
local function clock(pinned)
  if pinned ~= nil and pinned ~= '' then
    return tonumber(pinned)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The fence: a worker's write counts only while its attempt (the token start.lua gave
-- it) still holds the record. Once another attempt took over, or the record ended,
-- the stale worker's writes are refused.
local function holds(record, token)
  local state = redis.call('HMGET', record, 'status', 'attempts')
  return state[1] == 'running' and state[2] == token
end

-- Drop the in-flight entries whose records have expired (never finished, e.g. a queue
-- flushed by hand), so an event is never blocked by an execution that is gone.
local function live_count(inflight, now)
  if redis.call('ZCARD', inflight) == 0 then
    return 0  -- the common case, and beat's hot path: one command
  end
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  return redis.call('ZCARD', inflight)
end

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

-- Task messages, written here when the broker is this Redis (kombu's Redis transport: a
-- LIST of JSON messages, pushed on the left and taken from the right). One message runs
-- up to ``room`` executions (``entries``: "instance-id" or "instance-id event-id"),
-- built from app.core.publisher.RedisMessages' template. An entry joins the newest
-- message while that one still waits in the queue and has room: a backlog costs the
-- broker and the worker one message per batch, while an entry pushed onto a drained
-- queue still goes out alone, at once. No worker can be reading the message being
-- joined: a script runs alone, and a message taken from the list is no longer in it.
local function push_tasks(queue, template, sep, room, entries, now)
  if #entries == 0 then
    return
  end
  room = tonumber(room)
  local at = string.find(template, '@@ids@@', 1, true)
  local head, tail = string.sub(template, 1, at - 1), string.sub(template, at + 7)
  local lead = string.sub(tail, 1, string.find(tail, '@@', 1, true) - 1)
  local taken = 0
  local newest = redis.call('LINDEX', queue, 0)
  if newest and string.sub(newest, 1, #head) == head then
    local stop = string.find(newest, lead, #head + 1, true)
    if stop then
      local ids = string.sub(newest, #head + 1, stop - 1)
      local count, from = 1, 1
      while true do
        local found = string.find(ids, sep, from, true)
        if not found then
          break
        end
        count, from = count + 1, found + #sep
      end
      if count < room then
        taken = math.min(room - count, #entries)
        local joined = ids .. sep .. table.concat(entries, sep, 1, taken)
        redis.call('LSET', queue, 0, head .. joined .. string.sub(newest, stop))
      end
    end
  end
  local messages = {}
  for first = taken + 1, #entries, room do
    local last = math.min(first + room - 1, #entries)
    local id = string.match(entries[first], '^%S+')
    local message = head .. table.concat(entries, sep, first, last) .. tail
    message = string.gsub(message, '@@id@@', id)
    message = string.gsub(message, '@@tag@@', id .. '.' .. now)
    messages[#messages + 1] = message
  end
  if #messages > 0 then
    redis.call('LPUSH', queue, unpack(messages))
  end
end

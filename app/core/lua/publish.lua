-- publish.lua: move executions from a waiting set onto the broker's queue, once each.
--
-- Waiting sets: {p}:retry (a retry's backoff has run out), {p}:running (a worker's lease
-- ran out: it died mid-send), {p}:pending (a claim whose publish was never confirmed).
-- Removing the id from the set and pushing its task message happen together, so two
-- beats sweeping the same set never publish one execution twice.
--
-- KEYS[1]  the waiting ZSET
-- KEYS[2]  the broker's queue LIST (the broker is this Redis)
-- ARGV     instance id, task message, instance id, task message, ...
-- Returns  the number of messages pushed

local pushed = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    pushed = pushed + 1
  end
end
return pushed

-- cancel.lua: cancel an event's executions that have not started.
--
-- Only a record still queued or retrying is cancelled; one a worker has started is left
-- to finish, so a cancel never races a send into a record that lies.
--
-- KEYS[1]  {p}:pending   KEYS[2]  {p}:retry   KEYS[3]  the event's :active SET
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  instance hash key prefix ("{p}:instance:")
-- ARGV[3..] instance ids
-- Returns  the ids cancelled

local out = {}
for i = 3, #ARGV do
  local key = ARGV[2] .. ARGV[i]
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'retrying' then
    redis.call('HSET', key, 'status', 'cancelled', 'completed_at', ARGV[1])
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('SREM', KEYS[3], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out

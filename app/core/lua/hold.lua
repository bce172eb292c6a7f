-- hold.lua: a sending worker's heartbeat: renew its lease and record its progress,
-- as long as its attempt still holds the record.
--
-- Called before each recipient (with the progress so far) and every third of the lease
-- while a send runs, so a send slower than the lease keeps its record, while a worker
-- that died or stalled loses it to the next attempt (start.lua) and, once back, stops.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- KEYS[2]  {p}:running          ZSET instance id -> lease end (ms)
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  lease (ms)
-- ARGV[3]  the attempt's token
-- ARGV[4]  the instance id
-- ARGV[5]  recipients accepted so far (JSON list), or "" to leave them
-- ARGV[6]  the result so far (JSON), or ""
-- Returns  {"held"}; {"lost"} when another attempt took over or the record ended;
--          {"stop", why} when its event was paused or deleted meanwhile: the lease is
--          renewed all the same, since the worker is still finishing a copy it began and
--          will record what it sent (nobody else can know)

local now = clock(ARGV[1])
if not holds(KEYS[1], ARGV[3]) then
  return {'lost'}
end
local stop = redis.call('HGET', KEYS[1], 'stop')
local lease_until = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', lease_until)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'delivered', ARGV[5], 'result', ARGV[6])
end
redis.call('ZADD', KEYS[2], lease_until, ARGV[4])
if stop then
  return {'stop', stop}
end
return {'held'}

-- retry.lua: park an execution after a transient failure until its backoff runs out.
-- Retries wait in Redis, not in the broker; beat publishes them when due (release.lua).
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- KEYS[2]  {p}:running          ZSET
-- KEYS[3]  {p}:retry            ZSET instance id -> retry due (ms)
-- KEYS[4]  {p}:metrics:executions HASH status -> count
-- KEYS[5]  {p}:metrics:send-latency HASH histogram
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  the attempt's token (refused unless it still holds the record)
-- ARGV[3]  the instance id
-- ARGV[4]  backoff (ms)
-- ARGV[5]  the error
-- ARGV[6]  the attempt's send-latency bucket ("0.05" ... "+Inf"), ARGV[7] its seconds
-- Returns  {"retrying"} or {"lost"}

local now = clock(ARGV[1])
if not holds(KEYS[1], ARGV[2]) then
  return {'lost'}
end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'error', ARGV[5])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[3])
redis.call('HINCRBY', KEYS[4], 'retrying', 1)
redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
redis.call('HINCRBY', KEYS[5], 'count', 1)
redis.call('HINCRBYFLOAT', KEYS[5], 'sum', ARGV[7])
return {'retrying'}

-- due.lua: the events due now, by the Redis clock.
--
-- KEYS[1]  {p}:due  ZSET event id -> next run (whole epoch seconds)
-- ARGV[1]  now (epoch ms) when pinned, else "" (the server's clock)
-- ARGV[2]  the most events to return
-- Returns  {now (epoch ms), event id, score, event id, score, ...}, earliest first

local now = clock(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / 1000),
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
table.insert(due, 1, now)
return due

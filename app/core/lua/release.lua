-- release.lua: hand back to the broker the executions in a waiting set whose time has
-- come, each once.
--
-- Waiting sets: {p}:retry (a retry's backoff ran out), {p}:running (a worker's lease ran
-- out: it died or stalled mid-send), {p}:pending (a publish never confirmed: the process
-- that queued it died). Times are the Redis clock's.
--
-- KEYS[1]  the waiting ZSET (instance id -> epoch ms)
-- KEYS[2]  "push": the broker's queue LIST (the broker is this Redis): each id leaves the
--          waiting set and its task message is pushed in the same step;
--          "take": {p}:pending: each id moves there, scored now, and is returned for the
--          caller to publish and then clear (a crash in between leaves it pending)
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  grace (ms): only entries older than now - grace are due
-- ARGV[3]  the most to release
-- ARGV[4]  "push" or "take"
-- ARGV[5..7] push: the task message template, its separator and room (prelude.lua's
--          push_tasks)
-- Returns  {now (ms), instance id, ...}: what was released

local now = clock(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {now}
for _, id in ipairs(due) do
  if ARGV[4] == 'push' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[2], now, id)
    if KEYS[1] ~= KEYS[2] then
      redis.call('ZREM', KEYS[1], id)
    end
  end
  out[#out + 1] = id
end
if ARGV[4] == 'push' then
  push_tasks(KEYS[2], ARGV[5], ARGV[6], ARGV[7], {unpack(out, 2)}, now)
end
return out

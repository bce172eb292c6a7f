-- park.lua: take a paused event out of the due index, keeping where its schedule stood.
--
-- Run inside the MULTI of the pause (app.core.store), so the score it keeps is the one
-- at that instant: an occurrence already due but not yet claimed (beat was down, or had
-- not ticked yet) stays the first one resume looks at, and is recorded then, never lost;
-- one beat claimed a moment before is not kept, so it is never claimed twice.
--
-- KEYS[1]  {p}:due  ZSET event id -> next run (epoch s)
-- KEYS[2]  the event HASH
-- ARGV[1]  the event id
-- Returns  the score kept, or nil when the event was not in the due index

local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at then
  redis.call('HSET', KEYS[2], 'resume_at', at)
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return at

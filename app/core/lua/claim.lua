-- claim.lua: claim due occurrences for a batch of events, atomically and once each.
--
-- An occurrence is (event id, scheduled time). It is claimed by moving the event's
-- score in the due index from that scheduled time to the next one: a compare-and-set.
-- A beat that lost the race sees another score and writes nothing, so any number of
-- beat processes can run without ever claiming one occurrence twice.
--
-- KEYS[1]  {p}:due        ZSET  event id -> next run (whole epoch seconds)
-- KEYS[2]  {p}:pending    ZSET  instance id -> claimed at; cleared once its task is published
-- KEYS[3]  the broker's queue LIST when the broker is this Redis, else "": then the task
--          message is pushed here in the same atomic step as the claim, so no crash can
--          come between claiming and publishing; otherwise the caller publishes and
--          clears {p}:pending, and a crash in between is recovered from there
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  retention (seconds): instance records expire after this
-- ARGV[3]  event hash key prefix    ("{p}:event:", from app.core.keys; the event's
--          ":instances" ZSET and ":active" SET hang off the event key, as keys.py documents)
-- ARGV[4]  instance hash key prefix ("{p}:instance:")
-- ARGV[5]  JSON list of claims:
--            {"event": id, "at": scheduled epoch, "next": epoch or null,
--             "send": {"id": instance id, "at": epoch, "message": task message} or null,
--             "missed": [{"id": instance id, "at": epoch}, ...]}
-- Returns  a flat list: instance id, status ("queued" | "skipped" | "missed"), ...
--          for every record written; nothing for claims that lost the race.

local now = tonumber(ARGV[1])
local retention = tonumber(ARGV[2])
local event_prefix = ARGV[3]
local instance_prefix = ARGV[4]
local claims = cjson.decode(ARGV[5])
local out = {}

local function write_instance(event_key, fields, id, at, status)
  local key = instance_prefix .. id
  redis.call('HSET', key, 'id', id, 'event_id', fields[1], 'event_uid', fields[2],
    'project_id', fields[3], 'trigger', 'schedule', 'status', status,
    'scheduled_for', at, 'enqueued_at', now, 'attempts', 0)
  if status ~= 'queued' then
    redis.call('HSET', key, 'completed_at', now)
  end
  redis.call('EXPIRE', key, retention)
  redis.call('ZADD', event_key .. ':instances', at, id)
  out[#out + 1] = id
  out[#out + 1] = status
end

for _, claim in ipairs(claims) do
  local event_key = event_prefix .. claim.event
  local score = redis.call('ZSCORE', KEYS[1], claim.event)
  if score and tonumber(score) == tonumber(claim.at) then
    local fields = redis.call('HMGET', event_key, 'id', 'uid', 'project_id', 'overlap')
    if claim.next ~= cjson.null then
      redis.call('ZADD', KEYS[1], claim.next, claim.event)
    else
      redis.call('ZREM', KEYS[1], claim.event)
      redis.call('HSET', event_key, 'status', 'completed')
    end
    for _, missed in ipairs(claim.missed) do
      write_instance(event_key, fields, missed.id, missed.at, 'missed')
    end
    if claim.send ~= cjson.null then
      local status = 'queued'
      local active = event_key .. ':active'
      if fields[4] ~= 'allow' and redis.call('SCARD', active) > 0 then
        status = 'skipped'
      else
        redis.call('SADD', active, claim.send.id)
        if KEYS[3] ~= '' then
          redis.call('LPUSH', KEYS[3], claim.send.message)
        else
          redis.call('ZADD', KEYS[2], now, claim.send.id)
        end
      end
      write_instance(event_key, fields, claim.send.id, claim.send.at, status)
    end
    redis.call('ZREMRANGEBYSCORE', event_key .. ':instances', '-inf', now - retention)
  end
end
return out

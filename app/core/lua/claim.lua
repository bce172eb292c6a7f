-- claim.lua: claim due occurrences for a batch of events, atomically and once each.
--
-- An occurrence is (event id, scheduled time). It is claimed by moving the event's
-- score in the due index from that scheduled time to the next one: a compare-and-set.
-- A beat that lost the race sees another score and writes nothing, so any number of
-- beat processes can run without ever claiming one occurrence twice.
--
-- Hot path: the compare (ZMSCORE), the moves (ZADD) and the pushes (LPUSH) are one
-- command each for the whole batch; arguments are flat strings, never JSON.
--
-- KEYS[1]  {p}:due        ZSET  event id -> next run (whole epoch seconds)
-- KEYS[2]  {p}:pending    ZSET  instance id -> claimed at; cleared once its task is published
-- KEYS[3]  the broker's queue LIST when the broker is this Redis, else "": then the task
--          messages are pushed here in the same atomic step as the claim, so no crash can
--          come between claiming and publishing; otherwise the caller publishes and
--          clears {p}:pending, and a crash in between is recovered from there
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  retention (seconds): instance records expire after this
-- ARGV[3]  event hash key prefix    ("{p}:event:", from app.core.keys; the event's
--          ":instances" ZSET and ":active" SET hang off the event key, as keys.py documents)
-- ARGV[4]  instance hash key prefix ("{p}:instance:")
-- ARGV[5]  the number T of task message template parts that follow
-- ARGV[6..5+T] the parts (app.core.publisher.RedisMessages.parts): a message is the
--          parts joined with the instance id between each two
-- ARGV[6+T] the claims, one string: records separated by \30 (RS), each of 9 fields
--          separated by \31 (US) — one argument, so the client packs one string, not
--          nine per claim (uids cannot hold control characters; the API refuses them):
--          event id, scheduled epoch, next epoch ("" = none: the event is done),
--          event uid, project id, overlap ("skip" | "allow"),
--          instance id to send ("" = none), its scheduled epoch,
--          missed occurrences ("" or "instance-id epoch instance-id epoch ...")
-- Returns  a flat list: instance id, status ("queued" | "skipped" | "missed"), ...
--          for every record written; nothing for claims that lost the race.

local now = ARGV[1]
local retention = ARGV[2]
local event_prefix = ARGV[3]
local instance_prefix = ARGV[4]
local parts = tonumber(ARGV[5])
-- The message skeleton: parts at odd places, the instance id goes in the even ones.
local skeleton = {}
for i = 6, 5 + parts do
  skeleton[#skeleton + 1] = ARGV[i]
  skeleton[#skeleton + 1] = ''
end
skeleton[#skeleton] = nil

local claims, ids = {}, {}
for record in string.gmatch(ARGV[6 + parts], '[^\30]+') do
  local claim = {}
  for value in string.gmatch(record .. '\31', '([^\31]*)\31') do
    claim[#claim + 1] = value
  end
  claims[#claims + 1] = claim
  ids[#ids + 1] = claim[1]
end
local out = {}
if #claims == 0 then
  return out
end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))

local function write_instance(event_key, c, id, at, status)
  local key = instance_prefix .. id
  if status == 'queued' then
    redis.call('HSET', key, 'event_id', c[1], 'event_uid', c[4], 'project_id', c[5],
      'trigger', 'schedule', 'status', status, 'scheduled_for', at, 'enqueued_at', now)
  else
    -- Finished already: it expires after the retention. A queued record gets its
    -- expiry when its worker finishes it (off this hot path).
    redis.call('HSET', key, 'event_id', c[1], 'event_uid', c[4], 'project_id', c[5],
      'trigger', 'schedule', 'status', status, 'scheduled_for', at, 'enqueued_at', now,
      'completed_at', now)
    redis.call('EXPIRE', key, retention)
  end
  redis.call('ZADD', event_key .. ':instances', at, id)
  out[#out + 1] = id
  out[#out + 1] = status
end

local moves, removed, messages = {}, {}, {}
for i, c in ipairs(claims) do
  -- c: event id, scheduled, next, uid, project id, overlap, send id, send at, missed
  local score = scores[i]
  if score and tonumber(score) == tonumber(c[2]) then
    local event_key = event_prefix .. c[1]
    if c[3] ~= '' then
      moves[#moves + 1] = c[3]
      moves[#moves + 1] = c[1]
    else
      removed[#removed + 1] = c[1]
      redis.call('HSET', event_key, 'status', 'completed')
    end
    if c[9] ~= '' then
      for missed_id, at in string.gmatch(c[9], '(%S+) (%S+)') do
        write_instance(event_key, c, missed_id, at, 'missed')
      end
    end
    local send_id = c[7]
    if send_id ~= '' then
      local status = 'queued'
      local active = event_key .. ':active'
      if c[6] ~= 'allow' and redis.call('SCARD', active) > 0 then
        status = 'skipped'
      else
        redis.call('SADD', active, send_id)
        if KEYS[3] ~= '' then
          for slot = 2, #skeleton, 2 do
            skeleton[slot] = send_id
          end
          messages[#messages + 1] = table.concat(skeleton)
        else
          redis.call('ZADD', KEYS[2], now, send_id)
        end
      end
      write_instance(event_key, c, send_id, c[8], status)
    end
  end
end
if #moves > 0 then
  redis.call('ZADD', KEYS[1], unpack(moves))
end
if #removed > 0 then
  redis.call('ZREM', KEYS[1], unpack(removed))
end
if #messages > 0 then
  redis.call('LPUSH', KEYS[3], unpack(messages))
end
return out

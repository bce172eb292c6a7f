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
-- KEYS[2]  the broker's queue LIST when the broker is this Redis: the task messages are
--          pushed here in the same atomic step as the claim, so no crash can come
--          between claiming and publishing. Otherwise {p}:pending (ZSET instance id ->
--          epoch ms): the caller publishes, then clears it; a crash in between is
--          recovered from there.
-- KEYS[3..] per claim, from the claim's key base b: b the event HASH, b+1 its
--          :instances ZSET, b+2 its :inflight ZSET, then the instance HASH of the
--          occurrence to send (when there is one), then one per missed occurrence
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  retention (seconds): instance records expire after this
-- ARGV[3]  "push" (KEYS[2] is the queue) or "pending"
-- ARGV[4..6] "push": the task message template, its separator and room (prelude.lua's
--          push_tasks); otherwise unused
-- ARGV[7]  the claims, one string: records separated by \30 (RS), each of 12 fields
--          separated by \31 (US) — one argument, so the client packs one string, not
--          ten per claim (uids cannot hold control characters; the API refuses them):
--          event id, scheduled epoch, next epoch ("" = none: the event is done),
--          event uid, project id, overlap ("skip" | "allow"),
--          instance id to send ("" = none), its scheduled epoch,
--          missed occurrences ("" or "instance-id epoch instance-id epoch ..."),
--          the claim's key base b,
--          the nominal epoch of the occurrence sent when jitter moved it ("" = none),
--          max_runs ("" = none): the event completes once it has queued that many
--          occurrences (counted in its hash's "runs")
-- Returns  a flat list: instance id, status ("queued" | "skipped" | "missed"), ...
--          for every record written; nothing for claims that lost the race.

local now = clock(ARGV[1])
local stamp = math.floor(now / 1000)
local retention = tonumber(ARGV[2])
local push = ARGV[3] == 'push'

local claims, ids = {}, {}
for record in string.gmatch(ARGV[7], '[^\30]+') do
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

local function write_instance(key, instances, c, id, at, status)
  if status == 'queued' then
    redis.call('HSET', key, 'event_id', c[1], 'event_uid', c[4], 'project_id', c[5],
      'trigger', 'schedule', 'status', status, 'scheduled_for', at, 'enqueued_at', stamp)
  else
    redis.call('HSET', key, 'event_id', c[1], 'event_uid', c[4], 'project_id', c[5],
      'trigger', 'schedule', 'status', status, 'scheduled_for', at, 'enqueued_at', stamp,
      'completed_at', stamp)
  end
  redis.call('EXPIRE', key, retention)
  redis.call('ZADD', instances, at, id)
  out[#out + 1] = id
  out[#out + 1] = status
end

local moves, removed, entries = {}, {}, {}
for i, c in ipairs(claims) do
  -- c: event id, scheduled, next, uid, project id, overlap, send id, send at, missed, base,
  --    nominal, max runs
  local score = scores[i]
  if score and tonumber(score) == tonumber(c[2]) then
    local base = tonumber(c[10])
    local event, instances, inflight = KEYS[base], KEYS[base + 1], KEYS[base + 2]
    local next_key = base + 3
    local done = c[3] == ''
    local send_id = c[7]
    local send_key
    if send_id ~= '' then
      send_key = KEYS[next_key]
      next_key = next_key + 1
    end
    if c[9] ~= '' then
      for missed_id, at in string.gmatch(c[9], '(%S+) (%S+)') do
        write_instance(KEYS[next_key], instances, c, missed_id, at, 'missed')
        next_key = next_key + 1
      end
    end
    if send_id ~= '' then
      local status = 'queued'
      if c[6] ~= 'allow' and live_count(inflight, now) > 0 then
        status = 'skipped'
      else
        redis.call('ZADD', inflight, now + retention * 1000, send_id)
        if push then
          entries[#entries + 1] = send_id .. ' ' .. c[1]
        else
          redis.call('ZADD', KEYS[2], now, send_id)
        end
        if c[12] ~= '' and redis.call('HINCRBY', event, 'runs', 1) >= tonumber(c[12]) then
          done = true
        end
      end
      write_instance(send_key, instances, c, send_id, c[8], status)
      if c[11] ~= '' then
        redis.call('HSET', send_key, 'nominal_for', c[11])
      end
    end
    if done then
      removed[#removed + 1] = c[1]
      redis.call('HSET', event, 'status', 'completed')
    else
      moves[#moves + 1] = c[3]
      moves[#moves + 1] = c[1]
    end
  end
end
if #moves > 0 then
  redis.call('ZADD', KEYS[1], unpack(moves))
end
if #removed > 0 then
  redis.call('ZREM', KEYS[1], unpack(removed))
end
if push then
  push_tasks(KEYS[2], ARGV[4], ARGV[5], ARGV[6], entries, now)
end
return out

-- finish.lua: write an execution's final state, release its event's overlap slot and
-- count it — only while the caller's attempt still holds the record.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- KEYS[2]  {p}:running          ZSET
-- KEYS[3]  {p}:metrics:executions HASH status -> count
-- KEYS[4]  {p}:metrics:send-latency HASH histogram
-- KEYS[5]  the event HASH, KEYS[6] its :inflight ZSET, KEYS[7] its :instances ZSET —
--          only for an event's execution
-- ARGV[1]  now (epoch ms) when pinned, else ""
-- ARGV[2]  the attempt's token
-- ARGV[3]  the instance id
-- ARGV[4]  the final status ("succeeded" | "failed" | "cancelled")
-- ARGV[5]  the error ("" for none)
-- ARGV[6]  the result (JSON) or ""
-- ARGV[7]  retention (seconds)
-- ARGV[8]  the attempt's send-latency bucket, or "" when nothing was sent; ARGV[9] seconds
-- Returns  {"done"}, {"recovered"} (an event's success after a failure: its "failing"
--          mark cleared here, so one execution sees it) or {"lost"}

local now = clock(ARGV[1])
local record, id, status = KEYS[1], ARGV[3], ARGV[4]
if not holds(record, ARGV[2]) then
  return {'lost'}
end
local stamp = math.floor(now / 1000)
redis.call('HSET', record, 'status', status, 'completed_at', stamp, 'error', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', record, 'result', ARGV[6])
end
redis.call('HDEL', record, 'lease_until')
redis.call('EXPIRE', record, tonumber(ARGV[7]))
redis.call('ZREM', KEYS[2], id)
redis.call('HINCRBY', KEYS[3], status, 1)
if ARGV[8] ~= '' then
  redis.call('HINCRBY', KEYS[4], ARGV[8], 1)
  redis.call('HINCRBY', KEYS[4], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[4], 'sum', ARGV[9])
end
if KEYS[5] then
  redis.call('ZREM', KEYS[6], id)
  -- The event's index of executions is trimmed here, off beat's hot path.
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', stamp - tonumber(ARGV[7]))
  if (status == 'succeeded' or status == 'failed') and redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('HINCRBY', KEYS[5], 'run_count', 1)
    -- The id only: a summary (JSON) would push the hash out of its compact encoding.
    redis.call('HSET', KEYS[5], 'last_run', id)
    if status == 'failed' then
      redis.call('HSET', KEYS[5], 'failing', 1)
    elseif redis.call('HDEL', KEYS[5], 'failing') == 1 then
      return {'recovered'}
    end
  end
end
return {'done'}

-- due.lua: read a batch of due events with the fields beat plans a claim from.
--
-- One command and one flat reply instead of one HMGET per event: the reply is parsed
-- in C, not command by command in Python. Read-only; claiming is claim.lua's job.
--
-- KEYS[1]  {p}:due  ZSET event id -> next run (whole epoch seconds)
-- ARGV[1]  now (epoch seconds)
-- ARGV[2]  the most events to return
-- ARGV[3]  event hash key prefix ("{p}:event:")
-- ARGV[4..] the event hash fields to read
-- Returns  flat: event id, score, field values..., for each due event that still exists

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[2]))
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local out = {}
for i = 1, #due, 2 do
  local values = redis.call('HMGET', ARGV[3] .. due[i], unpack(fields))
  if values[1] then
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    for _, value in ipairs(values) do
      out[#out + 1] = value
    end
  end
end
return out

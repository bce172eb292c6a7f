-- fields.lua: the same fields of many hashes, in one command and one flat reply (parsed
-- in C) instead of one HMGET each. Read-only.
--
-- KEYS     the hashes
-- ARGV     the field names
-- Returns  flat: for each key in order, its values (nil where missing)

local out = {}
for _, key in ipairs(KEYS) do
  local values = redis.call('HMGET', key, unpack(ARGV))
  for i = 1, #ARGV do
    out[#out + 1] = values[i]
  end
end
return out

-- late.lua: record copies a worker got accepted after it lost its lease.
--
-- A worker that stalled in the middle of an SMTP transaction (SIGSTOP, a GC pause) may
-- hear the server's 250 after another attempt took the execution over. Its fenced
-- writes are refused, but that the copy was accepted is a fact the record must show,
-- or a copy that arrived would be missing from it. Facts are added beside the holder's
-- own fields, never over them: one field per attempt, merged when the record is read.
--
-- KEYS[1]  {p}:instance:{iid}  HASH the execution record
-- ARGV[1]  now (unused; every script takes it)
-- ARGV[2]  the late attempt's token
-- ARGV[3]  what it got accepted: JSON {"delivered": [recipients], "accepted": [addresses]}
-- Returns  1 when noted, 0 when the record is gone

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'late.' .. ARGV[2], ARGV[3])
return 1

-- report.lua: store one worker process's report (counters, latency,
-- heartbeat) about one queue, and keep the index of reporting processes.
--
-- KEYS[1]  <prefix>:{<q>}:processes           sorted set, process -> last seen ms
-- KEYS[2]  <prefix>:{<q>}:process:<process>   hash, the report's fields
-- ARGV[1]  process name
-- ARGV[2]  started_at of the reporting run (ms)
-- ARGV[3]  now (ms): its last-seen time
-- ARGV[4]  how long a report is kept without being refreshed (ms)
-- ARGV[5..] field, value, field, value, ... of the report
-- Returns  1 if stored, 0 if a newer run of the same process reports there.
--
-- Invariant kept atomically: the hash and its index entry change together,
-- and a run that started earlier (an old dyno still draining while its
-- replacement runs) never overwrites the newer run's report. Entries not
-- refreshed within the keep time leave the index; their hashes expire.
local stored = redis.call('HGET', KEYS[2], 'started_at')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[4])))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1

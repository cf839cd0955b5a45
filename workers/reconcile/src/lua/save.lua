-- save.lua: save a resource's book and the operation records it changed,
-- if nobody saved the book since it was read.
--
-- KEYS[1]  <prefix>:{res:<resource key>}:book   hash {version, data}
-- KEYS[2]  <prefix>:{res:<resource key>}:ops    sorted set, operation id -> arrived at (ms)
-- KEYS[2+i] <prefix>:{res:<resource key>}:op:<id of record i>   string, the record as JSON
-- ARGV[1]  the version the book had when it was read (0 = never saved)
-- ARGV[2]  the new book (MessagePack)
-- ARGV[3]  now, ms
-- ARGV[4]  retention, ms (records and their index entries expire after it)
-- ARGV[5 + 2(i-1)], ARGV[6 + 2(i-1)]  per record: arrived at (ms), JSON
-- Returns  1 saved, 0 the book changed meanwhile (read again and retry).
--
-- Invariant kept atomically: a book and the records of its operations
-- always agree (all keys share the resource's hash tag, so one slot).
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', current + 1, 'data', ARGV[2])
local retention = tonumber(ARGV[4])
for i = 1, #KEYS - 2 do
  local arrived, json = ARGV[5 + 2 * (i - 1)], ARGV[6 + 2 * (i - 1)]
  redis.call('SET', KEYS[2 + i], json, 'PX', retention)
  local id = string.match(KEYS[2 + i], ':op:(.*)$')
  redis.call('ZADD', KEYS[2], arrived, id)
end
-- Forget index entries of records that expired.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - retention)
redis.call('PEXPIRE', KEYS[2], retention)
return 1

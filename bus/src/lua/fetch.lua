-- fetch.lua: lease up to N messages to one consumer, promoting due retries first.
--
-- KEYS[1]  <prefix>:{<q>}:pending     list; the head (oldest) is the right end
-- KEYS[2]  <prefix>:{<q>}:delayed     sorted set, score = due ms
-- KEYS[3]  <prefix>:{<q>}:inflight:<consumer>  hash, "<seq>:<n>" -> message bytes
-- KEYS[4]  <prefix>:{<q>}:consumers   sorted set, consumer -> last heartbeat ms
-- ARGV[1]  consumer name
-- ARGV[2]  fetch sequence number (unique per consumer, increasing)
-- ARGV[3]  max messages
-- ARGV[4]  now, ms
-- ARGV[5]  max due retries to promote
-- Returns  flat array: token1, bytes1, token2, bytes2, ...
--
-- Invariant kept atomically: a message is in exactly one of pending, delayed
-- or an in-flight hash. Fetching again with the same sequence (the reply to
-- the first call was lost) returns the same leases instead of taking more.
local seq = ARGV[2]
local max = tonumber(ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])

if redis.call('HEXISTS', KEYS[3], seq .. ':1') == 1 then
  local out = {}
  for i = 1, max do
    local t = seq .. ':' .. i
    local raw = redis.call('HGET', KEYS[3], t)
    if raw then
      out[#out + 1] = t
      out[#out + 1] = raw
    end
  end
  return out
end

local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  -- Earliest due ends up rightmost: fetched first.
  for i = #due, 1, -1 do
    redis.call('RPUSH', KEYS[1], due[i])
  end
end

local msgs = redis.call('RPOP', KEYS[1], max)
if not msgs then
  return {}
end
local out, fields = {}, {}
for i, raw in ipairs(msgs) do
  local t = seq .. ':' .. i
  fields[#fields + 1] = t
  fields[#fields + 1] = raw
  out[#out + 1] = t
  out[#out + 1] = raw
end
redis.call('HSET', KEYS[3], unpack(fields))
return out

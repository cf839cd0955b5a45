-- admit.lua: check that fetched keyed messages may run now.
--
-- Messages pushed through the bus took their key at push time (push.lua), so
-- they pass. A keyed envelope put on `pending` by a foreign producer did not:
-- it takes the key if nobody holds it, and otherwise waits behind the holder.
--
-- KEYS[1]  <prefix>:{<q>}:fetches:<consumer>   hash: open fetch -> leases not yet settled
-- KEYS[2]  <prefix>:{<q>}:keys
-- KEYS[3i..3i+2], for message i (from 1):
--          <prefix>:{<q>}:inflight:<consumer>:<fetch>   its in-flight list
--          <prefix>:{<q>}:settled:<consumer>:<fetch>    bitmap of settled leases
--          <prefix>:{<q>}:held:<key of message i>
-- ARGV     per message, 4 values: fetch, n (position in the fetch), key, id
-- Returns  per message: 1 run it, 0 it was moved to `held` (do not run it).
--
-- Invariant: a message moved to `held` leaves the fetch in the same step
-- (its settled bit is set and the fetch's count lowered; a fetch with
-- nothing left is closed), so it
-- is in exactly one place.
local out = {}
local n_msgs = #ARGV / 4
for i = 1, n_msgs do
  local f, n, key, id = ARGV[4 * i - 3], tonumber(ARGV[4 * i - 2]), ARGV[4 * i - 1], ARGV[4 * i]
  local list, settled, held = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local holder = redis.call('HGET', KEYS[2], key)
  if (not holder) or holder == id or holder == '*' then
    redis.call('HSET', KEYS[2], key, id)
    out[i] = 1
  else
    local len = redis.call('LLEN', list)
    if n and n >= 1 and n <= len and redis.call('SETBIT', settled, n - 1, 1) == 0 then
      redis.call('RPUSH', held, redis.call('LINDEX', list, n - 1))
      if redis.call('BITCOUNT', settled) >= len then
        redis.call('DEL', list, settled)
        redis.call('HDEL', KEYS[1], f)
      else
        redis.call('HINCRBY', KEYS[1], f, -1)
      end
    end
    out[i] = 0
  end
end
return out

-- admit.lua: check that fetched keyed messages may run now.
--
-- Messages pushed through the bus took their key at push time (push.lua), so
-- they pass. A keyed envelope put on `pending` by a foreign producer did not:
-- it takes the key if nobody holds it, and otherwise waits behind the holder.
--
-- KEYS[1]  <prefix>:{<q>}:inflight:<consumer>
-- KEYS[2]  <prefix>:{<q>}:keys
-- KEYS[2+i] <prefix>:{<q>}:held:<key of message i>
-- ARGV     per message: token, key, id
-- Returns  per message: 1 run it, 0 it was moved to `held` (do not run it).
local out = {}
local n = #ARGV / 3
for i = 1, n do
  local token, key, id = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local holder = redis.call('HGET', KEYS[2], key)
  if (not holder) or holder == id or holder == '*' then
    redis.call('HSET', KEYS[2], key, id)
    out[i] = 1
  else
    local raw = redis.call('HGET', KEYS[1], token)
    if raw then
      redis.call('HDEL', KEYS[1], token)
      redis.call('RPUSH', KEYS[2 + i], raw)
    end
    out[i] = 0
  end
end
return out

-- promote.lua: move due retries to the head of pending.
--
-- The first script of a fetch's transaction: MULTI, ZADD consumers (the
-- heartbeat), HSETNX fetches:<consumer> <fetch> 0 (the fetch is open), this
-- script, up to N plain `LMOVE pending inflight:<consumer>:<fetch> RIGHT
-- RIGHT`, then `close.lua`; EXEC. The messages themselves never pass
-- through Lua: Redis 7 hashes every byte of every string a script is
-- handed, and for whole messages that was most of what a fetch cost.
--
-- KEYS[1]  <prefix>:{<q>}:pending     list; the head (oldest) is the right end
-- KEYS[2]  <prefix>:{<q>}:delayed     sorted set, score = due ms
-- ARGV[1]  now, ms
-- ARGV[2]  max due retries to promote
-- Returns  the number of retries promoted.
--
-- Invariant: a retry is in `delayed` or in `pending`, never both or
-- neither. Should this script fail, the transaction's other commands still
-- run: the fetch takes what is pending, and due retries wait for the next.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', '0', ARGV[2])
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  -- Earliest due ends up rightmost: fetched first.
  for i = #due, 1, -1 do
    redis.call('RPUSH', KEYS[1], due[i])
  end
end
return #due

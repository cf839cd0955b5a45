-- receipt.lua: make a push repeatable. A producer that retries a push
-- after an error cannot tell whether the first try was applied and only
-- its reply lost; it repeats the push under the same receipt, and the
-- repeat takes its messages back off.
--
-- Sent as the second command of
--     MULTI
--     LPUSH <pending> <envelope 1> ... <envelope n>
--     EVAL <this script> ...
--     EXEC
-- so that the envelopes never pass through Lua (Redis hashes every byte of
-- every string handed to a script). EVAL, not EVALSHA: a NOSCRIPT inside
-- EXEC would leave the push without its receipt.
--
-- KEYS[1]  <prefix>:{<q>}:pending
-- KEYS[2]  <prefix>:{<q>}:receipts   hash, producer -> seq of its last push
-- ARGV[1]  producer (a consumer's name)
-- ARGV[2]  seq of this push: grows with each push of that producer
-- ARGV[3]  n, the number of envelopes the LPUSH above pushed
-- ARGV[4]  how long the receipts hash lives after its last write, ms
-- Returns  1 when the push is new; 0 when it was a repeat (taken back).
--
-- Invariant kept atomically: a receipt is recorded exactly when its
-- messages stay queued, so one push under one receipt enqueues once.
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') or 0
if last >= tonumber(ARGV[2]) then
  -- The n just pushed are the leftmost n: nothing ran in between.
  redis.call('LPOP', KEYS[1], ARGV[3])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1

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
-- KEYS[2]  <prefix>:{<q>}:receipt:<producer>   string: seq of its last push
-- ARGV[1]  seq of this push: grows with each push of that producer
-- ARGV[2]  n, the number of envelopes the LPUSH above pushed
-- ARGV[3]  how long the receipt lives after its producer's last push, ms
-- Returns  1 when the push is new; 0 when it was a repeat (taken back).
--
-- Invariant kept atomically: a receipt is recorded exactly when its
-- messages stay queued, so one push under one receipt enqueues once.
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if last >= tonumber(ARGV[1]) then
  -- The n just pushed are the leftmost n: nothing ran in between.
  redis.call('LPOP', KEYS[1], ARGV[2])
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1

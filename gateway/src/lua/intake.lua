-- intake.lua: enqueue a message for `normalise` unless its mark says it was
-- accepted already.
--
-- A mark remembers one accepted request by its outside id: a webhook's
-- `X-GitHub-Delivery`, or a client change's operation id. Its value is the
-- id of the message that request became (also its trace id).
--
-- KEYS[1]  <prefix>:{normalise}:pending              list, producers LPUSH
-- KEYS[2]  <prefix>:{normalise}:delivery:<delivery>  string, the mark
--          (or <prefix>:{normalise}:change:<operation>)
-- ARGV[1]  envelope bytes
-- ARGV[2]  the envelope's message id, stored as the mark's value
-- ARGV[3]  how long the mark lives, ms
-- ARGV[4]  '' for a new request; otherwise the message id the mark must still
--          name for the request to be accepted again (its message went dead)
-- Returns  {1, <message id>} when queued, {0, <holder>} when the mark names
--          another message (a duplicate: nothing is written).
--
-- Invariant kept atomically: a mark exists only for a message that is on
-- `pending` (or was, and moved on through the pipeline); a crash can never
-- leave "marked as seen" without "queued", nor queue without marking.
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[4] then
  return {0, holder}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('LPUSH', KEYS[1], ARGV[1])
return {1, ARGV[2]}

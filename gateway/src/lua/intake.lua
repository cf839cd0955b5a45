-- intake.lua: decide, for a batch of requests whose messages were just
-- pushed onto `normalise` pending, which ones are new; take the others back
-- off. One call per batch: the requests that arrived while the previous
-- batch was on its way (group commit, see intake.rs).
--
-- Sent as the second command of
--     MULTI
--     LPUSH <pending> <envelope 1> ... <envelope n> <token>
--     EVAL <this script> ...
--     EXEC
-- so that the envelopes themselves never pass through Lua: Redis hashes
-- every byte of every string handed to a script, which for 6 KiB webhooks
-- cost more than everything else Redis did per request. The transaction
-- makes push and decision one atomic step; EVAL (not EVALSHA) because a
-- NOSCRIPT error inside EXEC would leave the push without the decision.
--
-- A mark remembers one accepted request by its outside id: a webhook's
-- `X-GitHub-Delivery`, or a client change's operation id. Its value is the
-- id of the message that request became (also its trace id).
--
-- KEYS[1]    <prefix>:{normalise}:pending              list
-- KEYS[1+i]  the mark of request i (1-based):
--            <prefix>:{normalise}:delivery:<delivery>  string
--            (or <prefix>:{normalise}:change:<operation>)
-- ARGV[1]    how long a mark lives, ms
-- ARGV[2]    the batch's token: pushed last, so it heads the list when the
--            LPUSH above succeeded; never a valid envelope
-- ARGV[3+2(i-1)]  request i's message id, stored as its mark's value
-- ARGV[4+2(i-1)]  '' for a new request; otherwise the message id the mark
--                 must still name for the request to be accepted again (its
--                 message went dead)
-- Returns    the duplicates only, in order, two entries each: i (the
--            request's 1-based position) and <holder>, the message its mark
--            names (its envelope is taken back off, nothing is kept); every
--            request not listed was queued. Usually empty: a reply of a few
--            bytes instead of two entries per request, which Redis writes
--            and the gateway parses for every webhook.
--            An error when the token is not at the head (the push failed;
--            nothing was written).
--
-- Needs Redis 7.0 or later (SET with both NX and GET). The gateway sends
-- this text without its whole-line comments (intake.rs).
--
-- Requests are decided in order, so two copies of one delivery in the same
-- batch keep one message, exactly as in two batches. Once the token is
-- popped, envelope i (of n) sits at index n - i.
--
-- Invariant kept atomically: a mark exists only for a message that is on
-- `pending` (or was, and moved on through the pipeline); a crash can never
-- leave "marked as seen" without "queued", nor queue without marking.
local pending, ttl, token = KEYS[1], ARGV[1], ARGV[2]
if redis.call('LINDEX', pending, 0) ~= token then
  return redis.error_reply('intake: batch token not at the head of ' .. pending .. '; the push failed')
end
redis.call('LPOP', pending)
local n = #KEYS - 1
local duplicates, taken_back = {}, 0
for i = 1, n do
  local mark, id, replacing = KEYS[1 + i], ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]
  -- One lookup for the common case: set if absent, else read the holder.
  local holder = redis.call('SET', mark, id, 'NX', 'GET', 'PX', ttl)
  if holder and holder ~= replacing then
    -- Overwritten by the (short) token, then removed below.
    redis.call('LSET', pending, n - i, token)
    taken_back = taken_back + 1
    duplicates[#duplicates + 1] = i
    duplicates[#duplicates + 1] = holder
  elseif holder then
    -- A redelivery of a message that went dead: the mark moves to this one.
    redis.call('SET', mark, id, 'PX', ttl)
  end
end
if taken_back > 0 then
  redis.call('LREM', pending, taken_back, token)
end
return duplicates

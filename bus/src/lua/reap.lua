-- reap.lua: put a consumer's in-flight messages back at the head of pending
-- and forget the consumer -- when its heartbeat lapsed, or unconditionally
-- when it is shutting down.
--
-- KEYS[1]  <prefix>:{<q>}:consumers   sorted set, consumer -> last heartbeat ms
-- KEYS[2]  <prefix>:{<q>}:pending
-- KEYS[3]  <prefix>:{<q>}:inflight:<consumer>
-- ARGV[1]  consumer name
-- ARGV[2]  lapsed-before ms: only act if the heartbeat is older ('' = always)
-- Returns  the number of messages put back, or -1 if the consumer is alive.
--
-- Invariant kept atomically: the messages go back in the order they were
-- fetched (fetch sequence, then position), oldest rightmost, attempts
-- unchanged; nothing is left in-flight for a consumer that no longer exists.
if ARGV[2] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if seen and tonumber(seen) >= tonumber(ARGV[2]) then
    return -1
  end
end
local flat = redis.call('HGETALL', KEYS[3])
local entries = {}
for i = 1, #flat, 2 do
  local seq, n = string.match(flat[i], '^(%d+):(%d+)$')
  entries[#entries + 1] = { tonumber(seq) or 0, tonumber(n) or 0, flat[i + 1] }
end
table.sort(entries, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
-- Newest first onto the right end, so the oldest ends up rightmost.
for i = #entries, 1, -1 do
  redis.call('RPUSH', KEYS[2], entries[i][3])
end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return #entries

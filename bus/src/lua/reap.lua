-- reap.lua: put a consumer's in-flight messages back at the head of pending
-- and forget the consumer -- when its heartbeat lapsed, or unconditionally
-- when it is shutting down.
--
-- KEYS[1]  <prefix>:{<q>}:consumers   sorted set, consumer -> last heartbeat ms
-- KEYS[2]  <prefix>:{<q>}:pending
-- KEYS[3]  <prefix>:{<q>}:fetches:<consumer>   hash: its open fetches -> leases not yet settled
-- KEYS[4]  <prefix>:{<q>}:inflight:<consumer>  hash: what a consumer of a
--          hookbus before per-fetch lists leased ("<seq>:<n>" -> bytes), so
--          that a rolling upgrade strands nothing an old worker held
-- KEYS[3+2j..4+2j], for declared fetch j (from 1):
--          <prefix>:{<q>}:inflight:<consumer>:<fetch j>
--          <prefix>:{<q>}:settled:<consumer>:<fetch j>
-- KEYS[last] <prefix>:{<q>}:reaped:<consumer>   string: set when the
--          heartbeat lapsed, so that the consumer, if it was only stalled,
--          learns on waking that what it held was handed on (and an empty
--          Redis after a restart, which has no such note, is not taken for
--          that). Its value, the cut-off, tells one reaping from the next:
--          the consumer reads the note and remembers the value, and never
--          deletes it, so a reply lost on its way cannot lose the note.
-- ARGV[1]  consumer name
-- ARGV[2]  lapsed-before ms: only act if the heartbeat is older ('' = always)
-- ARGV[3..] the declared fetch numbers, the caller's read of `fetches`
-- Returns  the number of messages put back; -1 if the consumer is alive;
--          -2 if `fetches` holds a fetch that was not declared (read it
--          again and call again: every key a script touches is declared,
--          as Redis Cluster requires).
--
-- Invariant kept atomically: the unsettled messages go back in the order
-- they were fetched (fetch number, then position), oldest rightmost,
-- attempts unchanged; nothing is left in flight for a consumer that no
-- longer exists.
if ARGV[2] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if seen and tonumber(seen) >= tonumber(ARGV[2]) then
    return -1
  end
end
local declared = {}
for j = 3, #ARGV do
  declared[ARGV[j]] = j - 2
end
for _, f in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not declared[f] then
    return -2
  end
end
local fetches = {}
for j = 3, #ARGV do
  fetches[#fetches + 1] = { tonumber(ARGV[j]) or 0, j - 2 }
end
table.sort(fetches, function(a, b) return a[1] < b[1] end)
local put_back = 0
-- Newest first onto the right end, so the oldest ends up rightmost.
for k = #fetches, 1, -1 do
  local j = fetches[k][2]
  local list, settled = KEYS[3 + 2 * j], KEYS[4 + 2 * j]
  local leased = redis.call('LRANGE', list, 0, -1)
  for n = #leased, 1, -1 do
    if redis.call('GETBIT', settled, n - 1) == 0 then
      redis.call('RPUSH', KEYS[2], leased[n])
      put_back = put_back + 1
    end
  end
  redis.call('DEL', list, settled)
end

local legacy = redis.call('HGETALL', KEYS[4])
local entries = {}
for i = 1, #legacy, 2 do
  local seq, n = string.match(legacy[i], '^(%d+):(%d+)$')
  entries[#entries + 1] = { tonumber(seq) or 0, tonumber(n) or 0, legacy[i + 1] }
end
table.sort(entries, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
for i = #entries, 1, -1 do
  redis.call('RPUSH', KEYS[2], entries[i][3])
  put_back = put_back + 1
end

redis.call('DEL', KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[#KEYS], ARGV[2], 'PX', 86400000)
end
return put_back

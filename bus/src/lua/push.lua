-- push.lua: enqueue messages at the tail of a queue, keyed ones behind their key.
--
-- KEYS[1]  <prefix>:{<q>}:pending    list, consumers take from the right
-- KEYS[2]  <prefix>:{<q>}:keys       hash, ordering key -> id of the message allowed to run
-- KEYS[3]  <prefix>:{<q>}:dead       list (only read when ARGV carries a dead entry)
-- KEYS[3+i] <prefix>:{<q>}:held:<key of message i> (any key of the slot for unkeyed ones)
-- ARGV[1]  n, the number of messages
-- ARGV[2+4(i-1) ..] per message: key ('' = none), id, envelope bytes,
--          dead entry bytes ('' = none; otherwise the message is only pushed
--          if that exact entry could be removed from `dead` -- a re-drive)
-- With a receipt (see receipt.lua), after the messages' keys and values:
-- KEYS[4+n] <prefix>:{<q>}:receipt:<producer>   string: seq of its last push
-- ARGV[2+4n], ARGV[3+4n]  seq, how long the receipt lives (ms)
-- Returns  the number of messages pushed (0 for a repeated receipt).
--
-- Invariant kept atomically: at most one message per key is outside
-- `held` (in pending, in-flight or delayed), and it is the one named in
-- `keys`; the others wait in `held:<key>` in enqueue order.
local n = tonumber(ARGV[1])
local pushed = 0
if #KEYS == 4 + n then
  local receipt, seq = KEYS[4 + n], tonumber(ARGV[2 + 4 * n])
  local last = tonumber(redis.call('GET', receipt) or '0') or 0
  if last >= seq then
    return 0
  end
  redis.call('SET', receipt, seq, 'PX', ARGV[3 + 4 * n])
end
for i = 1, n do
  local base = 2 + 4 * (i - 1)
  local key, id, raw, dead = ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local ok = true
  if dead ~= '' then
    ok = redis.call('LREM', KEYS[3], 1, dead) == 1
  end
  if ok then
    if key == '' then
      redis.call('LPUSH', KEYS[1], raw)
    else
      local holder = redis.call('HGET', KEYS[2], key)
      if (not holder) or holder == id or holder == '*' then
        redis.call('HSET', KEYS[2], key, id)
        redis.call('LPUSH', KEYS[1], raw)
      else
        redis.call('RPUSH', KEYS[3 + i], raw)
      end
    end
    pushed = pushed + 1
  end
end
return pushed

-- settle.lua: finish leases: ack, retry later, dead-letter, or put back.
--
-- KEYS[1]  <prefix>:{<q>}:inflight:<consumer>
-- KEYS[2]  <prefix>:{<q>}:pending
-- KEYS[3]  <prefix>:{<q>}:delayed
-- KEYS[4]  <prefix>:{<q>}:dead
-- KEYS[5]  <prefix>:{<q>}:keys
-- KEYS[6]  <prefix>:{<q>}:throughput:<minute start ms>  hash: handled, retried, dead
-- KEYS[6+i] <prefix>:{<q>}:held:<key of lease i> (any key of the slot for unkeyed ones)
-- ARGV[1]  how long the throughput hash lives, ms
-- ARGV     then per lease, 6 values: token, op, key ('' = none), id, data, score
--          op 'ack'     -> forget it
--          op 'retry'   -> ZADD delayed score data (data = envelope with attempts+1)
--          op 'dead'    -> LPUSH dead data (data = dead entry)
--          op 'requeue' -> RPUSH pending (the head) the leased bytes
-- Returns  the number of leases that were still held.
--
-- Invariants kept atomically: a lease is acted on only if it is still in the
-- consumer's in-flight hash (a consumer declared dead had its leases put back,
-- and its late settle must neither lose nor duplicate them), and only those
-- are counted in the minute's throughput (ack -> handled, retry -> retried,
-- dead -> dead; requeue is not a settlement). Ack and dead
-- release the key to the next held message, which goes to the tail of
-- pending; retry and requeue keep the key, so later messages of the key wait.
local function release(key, id, held)
  if key == '' or redis.call('HGET', KEYS[5], key) ~= id then
    return
  end
  local nxt = redis.call('LPOP', held)
  if not nxt then
    redis.call('HDEL', KEYS[5], key)
    return
  end
  local nid = '*'
  local ok, decoded = pcall(cmsgpack.unpack, nxt)
  if ok and type(decoded) == 'table' and type(decoded['id']) == 'string' then
    nid = decoded['id']
  end
  redis.call('HSET', KEYS[5], key, nid)
  redis.call('LPUSH', KEYS[2], nxt)
end

local settled = 0
local handled, retried, dead = 0, 0, 0
local plain_acks = {}
local n = (#ARGV - 1) / 6
for i = 1, n do
  local b = 1 + 6 * (i - 1)
  local token, op, key, id, data, score = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
  if op == 'ack' and key == '' then
    plain_acks[#plain_acks + 1] = token
  else
    local raw = redis.call('HGET', KEYS[1], token)
    if raw then
      redis.call('HDEL', KEYS[1], token)
      settled = settled + 1
      if op == 'ack' then
        handled = handled + 1
        release(key, id, KEYS[6 + i])
      elseif op == 'retry' then
        retried = retried + 1
        redis.call('ZADD', KEYS[3], tonumber(score), data)
      elseif op == 'dead' then
        dead = dead + 1
        redis.call('LPUSH', KEYS[4], data)
        release(key, id, KEYS[6 + i])
      elseif op == 'requeue' then
        redis.call('RPUSH', KEYS[2], raw)
      end
    end
  end
end
if #plain_acks > 0 then
  local acked = redis.call('HDEL', KEYS[1], unpack(plain_acks))
  settled = settled + acked
  handled = handled + acked
end
if handled + retried + dead > 0 then
  if handled > 0 then redis.call('HINCRBY', KEYS[6], 'handled', handled) end
  if retried > 0 then redis.call('HINCRBY', KEYS[6], 'retried', retried) end
  if dead > 0 then redis.call('HINCRBY', KEYS[6], 'dead', dead) end
  redis.call('PEXPIRE', KEYS[6], ARGV[1])
end
return settled

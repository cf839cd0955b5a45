-- settle.lua: finish leases: ack, retry later, dead-letter, or put back.
--
-- KEYS[1]  <prefix>:{<q>}:fetches:<consumer>   hash: open fetch -> leases not yet settled
-- KEYS[2]  <prefix>:{<q>}:pending
-- KEYS[3]  <prefix>:{<q>}:delayed
-- KEYS[4]  <prefix>:{<q>}:dead
-- KEYS[5]  <prefix>:{<q>}:keys
-- KEYS[6]  <prefix>:{<q>}:throughput:<minute start ms>  hash: handled, retried, dead
-- KEYS[5+2j], KEYS[6+2j]  for fetch j (j = 1..F):
--          <prefix>:{<q>}:inflight:<consumer>:<fetch j>   its in-flight list
--          <prefix>:{<q>}:settled:<consumer>:<fetch j>    bitmap of its settled leases
-- KEYS[6+2F+i]  for other lease i: <prefix>:{<q>}:held:<its key> (any key
--          of the slot for an unkeyed one)
-- ARGV[1]  how long the throughput hash lives, ms
-- ARGV[2]  F, the number of fetches
-- ARGV     then per fetch j: its number, a (the number of plain acks: acks
--          of unkeyed messages), then the a leases acknowledged, as bit
--          offsets (position - 1)
-- ARGV     then per other lease: j (the fetch's index above), its bit
--          offset (position - 1), op, key ('' = none), id, data, score --
--          7 values
--          op 'ack'     -> forget it (and release its key)
--          op 'retry'   -> ZADD delayed score data (data = envelope with attempts+1)
--          op 'dead'    -> LPUSH dead data (data = dead entry)
--          op 'requeue' -> RPUSH pending (the head) the leased bytes
-- Returns  the number of leases that were still held.
--
-- A lease is held while its fetch's in-flight list exists and its bit in
-- the fetch's settled bitmap is clear; settling sets the bit and lowers the
-- fetch's count in `fetches`, and the fetch's keys go once every lease in
-- it is settled. Invariants kept atomically: a lease is acted on only if
-- still held (a consumer declared dead had its leases put back, and its
-- late settle must neither lose nor duplicate them), and only those are
-- counted in the minute's throughput (ack -> handled, retry -> retried,
-- dead -> dead; requeue is not a settlement). Ack and dead release the key
-- to the next held message, which goes to the tail of pending; retry and
-- requeue keep the key, so later messages of the key wait.
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

-- The fetches: { number, list, bitmap, length, leases settled now }.
local n_fetches = tonumber(ARGV[2])
local fetches = {}
local at = 3
for j = 1, n_fetches do
  local list = KEYS[5 + 2 * j]
  local fetch = { ARGV[at], list, KEYS[6 + 2 * j], redis.call('LLEN', list), 0 }
  fetches[j] = fetch
  local a = tonumber(ARGV[at + 1])
  if a > 0 and fetch[4] > 0 then
    local args = {}
    for k = at + 2, at + 1 + a do
      -- Strings, not numbers: Lua formats every number it hands Redis
      -- with sprintf, which cost more than the rest of an ack.
      local offset = ARGV[k]
      local n = tonumber(offset)
      if n and n >= 0 and n < fetch[4] then
        args[#args + 1] = 'SET'
        args[#args + 1] = 'u1'
        args[#args + 1] = offset
        args[#args + 1] = '1'
      end
    end
    if #args > 0 then
      for _, old in ipairs(redis.call('BITFIELD', fetch[3], unpack(args))) do
        if old == 0 then
          fetch[5] = fetch[5] + 1
        end
      end
    end
  end
  handled = handled + fetch[5]
  settled = settled + fetch[5]
  at = at + 2 + a
end

local i = 0
while at + 6 <= #ARGV do
  i = i + 1
  local fetch, offset, op = fetches[tonumber(ARGV[at])], ARGV[at + 1], ARGV[at + 2]
  local n = tonumber(offset)
  local key, id, data, score = ARGV[at + 3], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local held = KEYS[6 + 2 * n_fetches + i]
  at = at + 7
  if fetch and n and n >= 0 and n < fetch[4] and redis.call('SETBIT', fetch[3], offset, '1') == 0 then
    settled = settled + 1
    fetch[5] = fetch[5] + 1
    if op == 'ack' then
      handled = handled + 1
      release(key, id, held)
    elseif op == 'retry' then
      retried = retried + 1
      redis.call('ZADD', KEYS[3], tonumber(score), data)
    elseif op == 'dead' then
      dead = dead + 1
      redis.call('LPUSH', KEYS[4], data)
      release(key, id, held)
    elseif op == 'requeue' then
      redis.call('RPUSH', KEYS[2], redis.call('LINDEX', fetch[2], offset))
    end
  end
end

for _, fetch in ipairs(fetches) do
  if fetch[5] > 0 then
    if redis.call('BITCOUNT', fetch[3]) >= fetch[4] then
      redis.call('DEL', fetch[2], fetch[3])
      redis.call('HDEL', KEYS[1], fetch[1])
    else
      redis.call('HINCRBY', KEYS[1], fetch[1], -fetch[5])
    end
  end
end

if handled + retried + dead > 0 then
  if handled > 0 then redis.call('HINCRBY', KEYS[6], 'handled', handled) end
  if retried > 0 then redis.call('HINCRBY', KEYS[6], 'retried', retried) end
  if dead > 0 then redis.call('HINCRBY', KEYS[6], 'dead', dead) end
  redis.call('PEXPIRE', KEYS[6], ARGV[1])
end
return settled

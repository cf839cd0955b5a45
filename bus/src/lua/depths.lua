-- depths.lua: one consistent snapshot of a queue's counts.
--
-- KEYS[1]  <prefix>:{<q>}:pending
-- KEYS[2]  <prefix>:{<q>}:delayed
-- KEYS[3]  <prefix>:{<q>}:dead
-- KEYS[4]  <prefix>:{<q>}:consumers
-- KEYS[5]  <prefix>:{<q>}:keys
-- KEYS[5+i]    <prefix>:{<q>}:fetches:<consumer i>   (i = 1..c): hash, open
--              fetch -> leases in it not yet settled
-- KEYS[5+c+j]  <prefix>:{<q>}:held:<ordering key j>
-- ARGV[1]  c, the number of consumers the caller declared
-- ARGV[2..1+c]  those consumers; ARGV[2+c..] those ordering keys
-- Returns  {1, pending, in_flight, delayed, held, dead, consumers}, or
--          {0, n, consumer 1..n, ordering key ...}: the declared consumers or
--          keys are not the current ones; call again declaring these.
--
-- Every key read is declared (Redis Cluster routes and checks by KEYS), so
-- the consumers' fetches and held lists to count are named by the caller and
-- checked here against `consumers` and `keys`: a message is only ever in
-- an open fetch of a listed consumer or the held list of a held key.
-- Read-only, so a snapshot never shows a message in two places or none.
local c = tonumber(ARGV[1])
local consumers = redis.call('ZRANGE', KEYS[4], 0, -1)
local ordering = redis.call('HKEYS', KEYS[5])

local function declared(current, first, count)
  if #current ~= count then
    return false
  end
  local named = {}
  for i = first, first + count - 1 do
    named[ARGV[i]] = true
  end
  for _, name in ipairs(current) do
    if not named[name] then
      return false
    end
  end
  return true
end

if not (declared(consumers, 2, c) and declared(ordering, 2 + c, #ARGV - 1 - c)) then
  local out = { 0, #consumers }
  for _, name in ipairs(consumers) do
    out[#out + 1] = name
  end
  for _, key in ipairs(ordering) do
    out[#out + 1] = key
  end
  return out
end

local in_flight = 0
for i = 1, c do
  for _, open in ipairs(redis.call('HVALS', KEYS[5 + i])) do
    in_flight = in_flight + (tonumber(open) or 0)
  end
end
local held = 0
for j = 1, #ordering do
  held = held + redis.call('LLEN', KEYS[5 + c + j])
end
return {
  1,
  redis.call('LLEN', KEYS[1]),
  in_flight,
  redis.call('ZCARD', KEYS[2]),
  held,
  redis.call('LLEN', KEYS[3]),
  #consumers,
}

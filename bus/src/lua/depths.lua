-- depths.lua: one consistent snapshot of a queue's counts.
--
-- KEYS[1]  <prefix>:{<q>}:pending
-- KEYS[2]  <prefix>:{<q>}:delayed
-- KEYS[3]  <prefix>:{<q>}:dead
-- KEYS[4]  <prefix>:{<q>}:consumers
-- KEYS[5]  <prefix>:{<q>}:keys
-- ARGV[1]  the queue's key base, <prefix>:{<q>}
-- Returns  {pending, in_flight, delayed, held, dead, consumers}
--
-- The in-flight and held keys are derived from the consumers and keys sets;
-- they share the queue's hash tag, so they live in the same cluster slot.
-- Read-only, so a snapshot never shows a message in two places or none.
local in_flight = 0
local consumers = redis.call('ZRANGE', KEYS[4], 0, -1)
for _, c in ipairs(consumers) do
  in_flight = in_flight + redis.call('HLEN', ARGV[1] .. ':inflight:' .. c)
end
local held = 0
for _, k in ipairs(redis.call('HKEYS', KEYS[5])) do
  held = held + redis.call('LLEN', ARGV[1] .. ':held:' .. k)
end
return {
  redis.call('LLEN', KEYS[1]),
  in_flight,
  redis.call('ZCARD', KEYS[2]),
  held,
  redis.call('LLEN', KEYS[3]),
  #consumers,
}

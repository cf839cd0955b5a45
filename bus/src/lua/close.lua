-- close.lua: the last step of a fetch's transaction (see promote.lua):
-- record how many leases the fetch holds, or forget a fetch that leased
-- nothing.
--
-- KEYS[1]  <prefix>:{<q>}:fetches:<consumer>   hash: open fetch -> leases not yet settled
-- KEYS[2]  <prefix>:{<q>}:inflight:<consumer>:<fetch>   its in-flight list
-- KEYS[3]  <prefix>:{<q>}:settled:<consumer>:<fetch>    bitmap of its settled leases
-- ARGV[1]  the fetch number
-- Returns  the number of leases the fetch holds.
--
-- Should this script fail, the fetch stays listed with a count of 0: its
-- messages are still put back by `reap.lua` (which reads the list, not the
-- count) and settled as usual; only `depths.lua` undercounts it.
local n = redis.call('LLEN', KEYS[2])
if n == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
n = n - redis.call('BITCOUNT', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], n)
return n

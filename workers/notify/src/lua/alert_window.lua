-- The alert window of one queue: at most one alert per window, and a count
-- of the dead-letter notices folded into the next alert (docs/redis-layout.md,
-- "Notify keys").
--
-- KEYS[1]  <prefix>:{notify}:alert:<queue>:window  (string, expires with the window)
-- KEYS[2]  <prefix>:{notify}:alert:<queue>:folded  (integer: notices not yet reported)
-- ARGV[1]  'notice' | 'flush' | 'posted'
-- ARGV[2]  window length, ms ('notice', 'flush'); notices reported ('posted')
--
-- Returns {state, folded, ttl_ms}: state 1 = the window was opened by this
-- call, post now (folded = notices folded so far, to report with it);
-- 0 = the window is open, wait (`notice`: this one was folded, folded = the
-- new count); 2 = nothing to report (`flush` with no folded notice, `posted`).
--
-- Invariant: a notice is either reported by the alert that opened a window
-- or counted in `folded`; the count only goes down by what a posted alert
-- reported ('posted'), so no notice is lost between processes.
local mode = ARGV[1]
if mode == 'posted' then
  local left = redis.call('DECRBY', KEYS[2], ARGV[2])
  if left <= 0 then
    redis.call('DEL', KEYS[2])
  end
  return {2, math.max(left, 0), 0}
end
local folded = tonumber(redis.call('GET', KEYS[2]) or '0')
if mode == 'flush' and folded <= 0 then
  return {2, 0, 0}
end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then
  return {1, folded, 0}
end
if mode == 'notice' then
  folded = redis.call('INCR', KEYS[2])
end
return {0, folded, math.max(redis.call('PTTL', KEYS[1]), 1)}

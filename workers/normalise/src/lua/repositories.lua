-- Records that repositories were enabled or disabled by an installation
-- event, unless a later event already decided them.
--
-- KEYS[1]  <prefix>:repositories   hash: "owner/name" -> "<state>:<ms>"
-- ARGV[1]  "enabled" or "disabled"
-- ARGV[2]  when the event was received, ms since epoch
-- ARGV[3..] repositories, lowercase "owner/name"
--
-- Returns the number of repositories whose entry was written.
--
-- Invariant (atomic): an entry only ever moves forward in time, so
-- installation events handled out of order (they are not keyed, so several
-- consumers may run them at once) end in the state of the latest one.
local state = ARGV[1]
local at = tonumber(ARGV[2])
local written = 0
for i = 3, #ARGV do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local current_at = -1
  if current then
    current_at = tonumber(string.match(current, ':(%-?%d+)$')) or -1
  end
  if at >= current_at then
    redis.call('HSET', KEYS[1], ARGV[i], state .. ':' .. ARGV[2])
    written = written + 1
  end
end
return written

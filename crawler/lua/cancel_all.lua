-- Stop every recurring URL: those waiting in the schedule are done now; bumping the schedule generation ends
-- those whose pass is queued, deferred or leased at their ack (their entries carry the old generation), in O(1)
-- per URL in progress. One UNLINK per second that has waiting entries (the time wheel's buckets).
-- KEYS: recur, stats   ARGV: prefix
-- Returns how many waiting URLs were stopped now.
local recur_key, stats_key = KEYS[1], KEYS[2]
local n = tonumber(redis.call('HGET', stats_key, 'scheduled') or '0')
redis.call('INCR', prefix .. 'recur_gen')
local seconds = redis.call('ZRANGE', recur_key, 0, -1)
for i = 1, #seconds, 1000 do
  local keys = {}
  for j = i, math.min(i + 999, #seconds) do keys[#keys + 1] = prefix .. 'recur:' .. seconds[j] end
  redis.call('UNLINK', unpack(keys))
end
redis.call('DEL', recur_key)
redis.call('DEL', prefix .. 'recur_cancel')  -- single cancels are subsumed by the new generation
if n > 0 then
  redis.call('HINCRBY', stats_key, 'done', n)
  redis.call('HINCRBY', stats_key, 'recurring', -n)
  redis.call('HSET', stats_key, 'scheduled', 0)
end
return n

-- Stop every recurring URL: those waiting in `recur` are done now; bumping the schedule generation ends those
-- whose pass is queued, deferred or leased at their ack (their entries carry the old generation), in O(1).
-- KEYS: recur, stats   ARGV: prefix
-- Returns how many waiting URLs were stopped now.
local recur_key, stats_key = KEYS[1], KEYS[2]
local n = redis.call('ZCARD', recur_key)
redis.call('INCR', prefix .. 'recur_gen')
redis.call('UNLINK', recur_key)
redis.call('DEL', prefix .. 'recur_cancel')  -- single cancels are subsumed by the new generation
if n > 0 then
  redis.call('HINCRBY', stats_key, 'done', n)
  redis.call('HINCRBY', stats_key, 'recurring', -n)
end
return n

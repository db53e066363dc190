-- Stop one recurring URL. Its entries waiting in the schedule (found by the client: bucket second, entry) are
-- removed and the URL is done; when none is there any more (its pass is queued, deferred or leased right now, or
-- the lease script took it meanwhile), it is marked in recur_cancel and its pass in progress ends the schedule
-- at its ack.
-- KEYS: recur, stats   ARGV: prefix, url, then (bucket second, entry) pairs
-- Returns {removed from the schedule, 1 when marked for its pass in progress}.
local recur_key, stats_key = KEYS[1], KEYS[2]
local url = ARGV[2]
local removed = 0
for i = 3, #ARGV, 2 do
  local bucket = prefix .. 'recur:' .. ARGV[i]
  local _, _, u = split_entry(ARGV[i + 1])
  if u == url and redis.call('LREM', bucket, 1, ARGV[i + 1]) == 1 then
    removed = removed + 1
    if redis.call('EXISTS', bucket) == 0 then redis.call('ZREM', recur_key, ARGV[i]) end
  end
end
if removed > 0 then
  redis.call('HINCRBY', stats_key, 'done', removed)
  redis.call('HINCRBY', stats_key, 'recurring', -removed)
  redis.call('HINCRBY', stats_key, 'scheduled', -removed)
  return {removed, 0}
end
redis.call('SADD', prefix .. 'recur_cancel', url)
return {0, 1}

-- Retry later: owned leases move to the deferred set at their due time with their new attempt count.
-- KEYS: leases, host_inflight, hosts, deferred, stats
-- ARGV: prefix, now_ms, per_host_concurrency, then (member, due_ms, attempts) triples
-- Returns how many were still owned and were deferred.
local leases_key, inflight_key, hosts_key, deferred_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local deferred = 0
for i = 4, #ARGV, 3 do
  local member = ARGV[i]
  if redis.call('ZREM', leases_key, member) == 1 then
    local depth, _, url, tail = split_entry(entry_of_member(member))
    local host = host_of(url)
    redis.call('ZADD', deferred_key, tonumber(ARGV[i + 1]), depth .. ' ' .. ARGV[i + 2] .. ' ' .. url .. tail)
    dec_inflight(inflight_key, host)
    make_ready(hosts_key, inflight_key, host, now, phc)
    deferred = deferred + 1
  end
end
if deferred > 0 then redis.call('HINCRBY', stats_key, 'retried', deferred) end
return deferred

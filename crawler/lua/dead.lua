-- Dead-letter owned leases with their last error.
-- KEYS: leases, host_inflight, hosts, dead, stats
-- ARGV: prefix, now_ms, per_host_concurrency, then (member, attempts, error_json) triples
-- Returns how many were still owned and went to the dead-letter set.
local leases_key, inflight_key, hosts_key, dead_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local n = 0
for i = 4, #ARGV, 3 do
  local member = ARGV[i]
  if redis.call('ZREM', leases_key, member) == 1 then
    local depth, _, url, tail = split_entry(entry_of_member(member))
    local host = host_of(url)
    redis.call('HSET', dead_key, url, dead_value(depth, ARGV[i + 1], now, ARGV[i + 2], tail))
    dec_inflight(inflight_key, host)
    make_ready(hosts_key, inflight_key, host, now, phc)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', stats_key, 'dead', n) end
return n

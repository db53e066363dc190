-- Give leases back without counting an attempt (graceful stop, 407 from the gateway): front of the queue.
-- KEYS: leases, host_inflight, hosts, stats   ARGV: prefix, now_ms, per_host_concurrency, members...
-- Returns how many were still owned and went back.
local leases_key, inflight_key, hosts_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local released = 0
for i = 4, #ARGV do
  local member = ARGV[i]
  if redis.call('ZREM', leases_key, member) == 1 then
    local entry = entry_of_member(member)
    local _, _, url = split_entry(entry)
    local host = host_of(url)
    redis.call('LPUSH', prefix .. 'q:' .. host, entry)
    dec_inflight(inflight_key, host)
    make_ready(hosts_key, inflight_key, host, now, phc)
    released = released + 1
  end
end
if released > 0 then redis.call('HINCRBY', stats_key, 'queued', released) end
return released

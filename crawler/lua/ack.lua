-- Ack a batch: each owned lease becomes done, and the batch's new links are added (deduplicated).
-- KEYS: leases, host_inflight, hosts, seen, stats
-- ARGV: prefix, now_ms, per_host_concurrency, n_members, members..., fingerprints of the links (8 bytes each,
-- concatenated), the links' entries (newline-separated, same order)
-- Returns {acked, added}. A member this consumer no longer owns (its lease expired and was reclaimed) is not
-- counted again: its URL is already back in the frontier or done by another consumer (at-least-once).
local leases_key, inflight_key, hosts_key, seen_key, stats_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local acked = 0
local touched = {}
for i = 5, 4 + n do
  local member = ARGV[i]
  if redis.call('ZREM', leases_key, member) == 1 then
    local _, _, url = split_entry(entry_of_member(member))
    local host = host_of(url)
    dec_inflight(inflight_key, host)
    touched[host] = true
    acked = acked + 1
  end
end
if acked > 0 then
  redis.call('HINCRBY', stats_key, 'done', acked)
  local bucket = prefix .. 'rate:' .. math.floor(now / 1000)
  redis.call('INCRBY', bucket, acked)
  redis.call('EXPIRE', bucket, 3700)
end
local added = add_entries(seen_key, hosts_key, stats_key, ARGV[5 + n], ARGV[6 + n], now, false)
for host, _ in pairs(touched) do make_ready(hosts_key, inflight_key, host, now, phc) end
return {acked, added}

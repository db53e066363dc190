-- Ack a batch: each owned lease becomes done, or, for a recurring URL, waits in the schedule for its next pass; and
-- the batch's new links are added (deduplicated).
-- KEYS: leases, host_inflight, hosts, seen, stats, recur, dead
-- ARGV: prefix, now_ms, per_host_concurrency, n_members, then n (member, due_ms, next_entry) triples, fingerprints
-- of the links (8 bytes each, concatenated), the links' entries (newline-separated, same order).
-- `next_entry` is "" for a URL that does not recur; for a recurring one it is the entry of its next pass (fresh
-- attempt count, the validators of this pass), built by the client, and `due_ms` when that pass is due.
-- Returns {acked, added}. A member this consumer no longer owns (its lease expired and was reclaimed) is not
-- counted again: its URL is already back in the frontier or done by another consumer (at-least-once).
local leases_key, inflight_key, hosts_key, seen_key, stats_key, recur_key, dead_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local acked, done, passes = 0, 0, 0
local touched = {}
for i = 5, 4 + 3 * n, 3 do
  local member, next_entry = ARGV[i], ARGV[i + 2]
  if redis.call('ZREM', leases_key, member) == 1 then
    local _, _, url = split_entry(entry_of_member(member))
    local host = host_of(url)
    dec_inflight(inflight_key, host)
    touched[host] = true
    acked = acked + 1
    local _, _, _, next_tail = split_entry(next_entry)
    local _, recur = split_tail(next_tail or '')
    if recur and keeps_schedule(stats_key, url, recur) then
      schedule_pass(recur_key, tonumber(ARGV[i + 1]), next_entry, recur)
      redis.call('HDEL', dead_key, url)  -- a failure of an earlier pass is over
      passes = passes + 1
    else
      done = done + 1
    end
  end
end
if done > 0 then redis.call('HINCRBY', stats_key, 'done', done) end
if passes > 0 then
  redis.call('HINCRBY', stats_key, 'passes', passes)
  redis.call('HINCRBY', stats_key, 'scheduled', passes)
end
if acked > 0 then
  local bucket = prefix .. 'rate:' .. math.floor(now / 1000)
  redis.call('INCRBY', bucket, acked)
  redis.call('EXPIRE', bucket, 3700)
end
local base = 5 + 3 * n
local added = add_entries(seen_key, hosts_key, stats_key, ARGV[base], ARGV[base + 1], now, false)
for host, _ in pairs(touched) do make_ready(hosts_key, inflight_key, host, now, phc) end
return {acked, added}

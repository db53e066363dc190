-- Dead-letter owned leases with their last error. A recurring URL keeps its schedule: its failure is written
-- to the dead set (flagged "recurring", for `crawl dead`) and it waits in the schedule for its next pass.
-- KEYS: leases, host_inflight, hosts, dead, stats, recur
-- ARGV: prefix, now_ms, per_host_concurrency, then (member, attempts, error_json, due_ms) quadruples; due_ms is
-- when a recurring URL's next pass is due (ignored for others).
-- Returns how many were still owned and were dead-lettered (recurring ones included).
local leases_key, inflight_key, hosts_key, dead_key, stats_key, recur_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local n, dead, failed = 0, 0, 0
for i = 4, #ARGV, 4 do
  local member = ARGV[i]
  if redis.call('ZREM', leases_key, member) == 1 then
    local depth, _, url, tail = split_entry(entry_of_member(member))
    local host = host_of(url)
    local _, recur = split_tail(tail)
    if recur and keeps_schedule(stats_key, url, recur) then
      redis.call('HSET', dead_key, url, dead_value(depth, ARGV[i + 1], now, flag_recurring(ARGV[i + 2]), tail))
      schedule_pass(recur_key, tonumber(ARGV[i + 3]), depth .. ' 0 ' .. url .. tail, recur)
      failed = failed + 1
    else
      redis.call('HSET', dead_key, url, dead_value(depth, ARGV[i + 1], now, ARGV[i + 2], tail))
      dead = dead + 1
    end
    dec_inflight(inflight_key, host)
    make_ready(hosts_key, inflight_key, host, now, phc)
    n = n + 1
  end
end
if dead > 0 then redis.call('HINCRBY', stats_key, 'dead', dead) end
if failed > 0 then
  redis.call('HINCRBY', stats_key, 'failed_passes', failed)
  redis.call('HINCRBY', stats_key, 'scheduled', failed)
end
return n

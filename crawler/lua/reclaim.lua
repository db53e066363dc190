-- Reclaim expired leases (their consumer died or stalled): back to the front of their queue with one more
-- attempt, or dead-lettered as "lease_expired" when that was the last attempt (a page that kills every worker
-- that touches it must not loop forever). Any live consumer may run this; it is idempotent.
-- A recurring URL on its last attempt keeps its schedule (as in dead.lua): next pass one period from now.
-- KEYS: leases, host_inflight, hosts, dead, stats, recur
-- ARGV: prefix, now_ms, per_host_concurrency, max_attempts, limit, jitter (a fraction of the period, -0.1..0.1)
-- Returns {requeued, dead}.
local leases_key, inflight_key, hosts_key, dead_key, stats_key, recur_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local jitter = tonumber(ARGV[6])
local now = tonumber(ARGV[2])
local phc = tonumber(ARGV[3])
local max_attempts = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
local requeued, dead, failed = 0, 0, 0
for _, member in ipairs(expired) do
  redis.call('ZREM', leases_key, member)
  local depth, attempts, url, tail = split_entry(entry_of_member(member))
  local host = host_of(url)
  attempts = attempts + 1
  dec_inflight(inflight_key, host)
  local _, recur = split_tail(tail)
  if attempts >= max_attempts then
    local err = cjson.encode({kind = 'lease_expired', message = 'lease expired ' .. attempts .. ' times'})
    if recur and keeps_schedule(stats_key, url, recur) then
      redis.call('HSET', dead_key, url, dead_value(depth, attempts, now, flag_recurring(err), tail))
      schedule_pass(recur_key, recur_due(recur, now, jitter), depth .. ' 0 ' .. url .. tail, recur)
      failed = failed + 1
    else
      redis.call('HSET', dead_key, url, dead_value(depth, attempts, now, err, tail))
      dead = dead + 1
    end
  else
    redis.call('LPUSH', prefix .. 'q:' .. host, depth .. ' ' .. attempts .. ' ' .. url .. tail)
    requeued = requeued + 1
  end
  make_ready(hosts_key, inflight_key, host, now, phc)
end
if requeued > 0 then
  redis.call('HINCRBY', stats_key, 'queued', requeued)
  redis.call('HINCRBY', stats_key, 'retried', requeued)
end
if dead > 0 then redis.call('HINCRBY', stats_key, 'dead', dead) end
if failed > 0 then
  redis.call('HINCRBY', stats_key, 'failed_passes', failed)
  redis.call('HINCRBY', stats_key, 'scheduled', failed)
end
return {requeued, dead + failed}

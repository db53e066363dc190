-- Lease up to N entries for one consumer, honouring crawl-wide per-host concurrency and delay.
-- KEYS: hosts, host_inflight, host_next, leases, deferred, stats, recur, host_delay
-- host_delay: host -> ms, a robots.txt Crawl-delay (capped by the worker); it wins over a shorter per-host delay
-- ARGV: prefix, now_ms, n, token, deadline_ms, per_host_concurrency (0: unlimited), per_host_delay_ms
-- Returns {members, next_due_ms}: the leased members ("<token> <entry>"), and when more work may become
-- leasable (-1: nothing queued, deferred or scheduled). An empty frontier returns {{}, -1}.
-- Recurring URLs whose next pass is due join their host's queue here, so every pass goes through the same
-- per-host politeness as any URL: there is no second scheduler.
local hosts_key, inflight_key, next_key, leases_key, deferred_key, stats_key, recur_key, host_delay_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local token = ARGV[4]
local deadline = tonumber(ARGV[5])
local phc = tonumber(ARGV[6])
local default_delay = tonumber(ARGV[7])
local any_host_delay = redis.call('EXISTS', host_delay_key) == 1  -- one check, so crawls without any pay nothing

-- 1. retries and recurring passes that are due go to the front of their host's queue (a pass is late already)
local function requeue_due(zset_key)
  local due = redis.call('ZRANGEBYSCORE', zset_key, '-inf', now, 'LIMIT', 0, 500)
  if #due > 0 then
    for _, entry in ipairs(due) do
      local _, _, url = split_entry(entry)
      local host = host_of(url)
      redis.call('LPUSH', prefix .. 'q:' .. host, entry)
      redis.call('ZADD', hosts_key, 'NX', now, host)
    end
    redis.call('ZREM', zset_key, unpack(due))
    redis.call('HINCRBY', stats_key, 'queued', #due)
  end
end
requeue_due(deferred_key)
-- the schedule's buckets (see schedule_pass) whose second has come, oldest first, at most 500 entries per call
local moved = 0
for _, s in ipairs(redis.call('ZRANGEBYSCORE', recur_key, '-inf', now, 'LIMIT', 0, 16)) do
  if moved >= 500 then break end
  local bucket = prefix .. 'recur:' .. s
  local items = redis.call('LPOP', bucket, 500 - moved)
  for _, entry in ipairs(items or {}) do
    local _, _, url = split_entry(entry)
    local host = host_of(url)
    redis.call('LPUSH', prefix .. 'q:' .. host, entry)
    redis.call('ZADD', hosts_key, 'NX', now, host)
  end
  moved = moved + #(items or {})
  if redis.call('EXISTS', bucket) == 0 then redis.call('ZREM', recur_key, s) end
end
if moved > 0 then
  redis.call('HINCRBY', stats_key, 'queued', moved)
  redis.call('HINCRBY', stats_key, 'scheduled', -moved)
end

-- 2. take from ready hosts, earliest first (Mercator back-queue selection)
local out = {}
local zargs = {}
local rounds = 0
while #out < want and rounds < 64 do
  rounds = rounds + 1
  local hosts = redis.call('ZRANGEBYSCORE', hosts_key, '-inf', now, 'LIMIT', 0, want - #out)
  if #hosts == 0 then break end
  for _, host in ipairs(hosts) do
    if #out >= want then break end
    local qkey = prefix .. 'q:' .. host
    local delay = default_delay
    if any_host_delay then
      local hd = tonumber(redis.call('HGET', host_delay_key, host) or '0')
      if hd > delay then delay = hd end
    end
    local inflight = tonumber(redis.call('HGET', inflight_key, host) or '0')
    local nxt = delay > 0 and tonumber(redis.call('HGET', next_key, host) or '0') or 0
    if phc > 0 and inflight >= phc then
      redis.call('ZREM', hosts_key, host)  -- blocked: ack/release/reclaim make it ready again
    elseif nxt > now then
      redis.call('ZADD', hosts_key, nxt, host)
    else
      local take = want - #out
      if phc > 0 and take > phc - inflight then take = phc - inflight end
      if delay > 0 then take = 1 end
      local items = redis.call('LPOP', qkey, take)
      if not items then
        redis.call('ZREM', hosts_key, host)
      else
        for _, entry in ipairs(items) do
          local member = token .. ' ' .. entry
          out[#out + 1] = member
          zargs[#zargs + 1] = deadline
          zargs[#zargs + 1] = member
        end
        inflight = redis.call('HINCRBY', inflight_key, host, #items)
        if delay > 0 then redis.call('HSET', next_key, host, now + delay) end
        if redis.call('EXISTS', qkey) == 0 or (phc > 0 and inflight >= phc) then
          redis.call('ZREM', hosts_key, host)
        elseif delay > 0 then
          redis.call('ZADD', hosts_key, now + delay, host)
        end
      end
    end
  end
end
if #out > 0 then
  redis.call('ZADD', leases_key, unpack(zargs))
  redis.call('HINCRBY', stats_key, 'queued', -#out)
end

local next_due = -1
local h = redis.call('ZRANGE', hosts_key, 0, 0, 'WITHSCORES')
if #h > 0 then next_due = tonumber(h[2]) end
local d = redis.call('ZRANGE', deferred_key, 0, 0, 'WITHSCORES')
if #d > 0 and (next_due < 0 or tonumber(d[2]) < next_due) then next_due = tonumber(d[2]) end
local r = redis.call('ZRANGE', recur_key, 0, 0, 'WITHSCORES')
if #r > 0 and (next_due < 0 or tonumber(r[2]) < next_due) then next_due = tonumber(r[2]) end
if next_due < 0 and tonumber(redis.call('HGET', stats_key, 'queued') or '0') > 0 then
  next_due = now + 50  -- work is queued but every host is at its concurrency limit: look again soon
end
return {out, next_due}

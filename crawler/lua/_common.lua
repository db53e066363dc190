-- Prepended to every script (see crawler/frontier.py). Entries are "<depth> <attempts> <url>"; a lease member
-- is "<token> <entry>". Normalised URLs contain no spaces, so splitting on the first spaces is exact.
local prefix = ARGV[1]
local function host_of(url)
  return string.match(url, '^%a+://([^/]+)')
end
local function split_entry(entry)
  local depth, attempts, url = string.match(entry, '^(%d+) (%d+) (.+)$')
  return tonumber(depth), tonumber(attempts), url
end
local function entry_of_member(member)
  return string.match(member, '^[^ ]+ (.+)$')
end
-- A host with queued work and a free slot goes (back) into the ready set; NX keeps a later delay-based score.
local function make_ready(hosts_key, inflight_key, host, now, phc)
  if phc > 0 then
    local n = tonumber(redis.call('HGET', inflight_key, host) or '0')
    if n >= phc then return end
  end
  if redis.call('EXISTS', prefix .. 'q:' .. host) == 1 then
    redis.call('ZADD', hosts_key, 'NX', now, host)
  end
end
local function dec_inflight(inflight_key, host)
  if redis.call('HINCRBY', inflight_key, host, -1) <= 0 then
    redis.call('HDEL', inflight_key, host)
  end
end
-- Add new entries (fingerprint, host, entry triples from ARGV[first..]); returns how many were new.
local function add_entries(seen_key, hosts_key, stats_key, first, now, front)
  local added = 0
  local touched = {}
  for i = first, #ARGV, 3 do
    if redis.call('SADD', seen_key, ARGV[i]) == 1 then
      local host = ARGV[i + 1]
      if front then
        redis.call('LPUSH', prefix .. 'q:' .. host, ARGV[i + 2])
      else
        redis.call('RPUSH', prefix .. 'q:' .. host, ARGV[i + 2])
      end
      touched[host] = true
      added = added + 1
    end
  end
  for host, _ in pairs(touched) do
    redis.call('ZADD', hosts_key, 'NX', now, host)
  end
  if added > 0 then
    redis.call('HINCRBY', stats_key, 'enqueued', added)
    redis.call('HINCRBY', stats_key, 'queued', added)
  end
  return added
end

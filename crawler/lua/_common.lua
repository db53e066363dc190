-- Prepended to every script (see crawler/frontier.py). Entries are "<depth> <attempts> <url>", or
-- "<depth> <attempts> <url> <extras JSON>" for a URL with user data; a lease member is "<token> <entry>".
-- Serialised URLs contain no spaces, so splitting on the first spaces is exact. `tail` is "" or " <extras JSON>":
-- every script that rebuilds an entry (a new attempt count) appends it unchanged.
-- A recurring URL's tail ends in "\t<every_s> <gen>[ <last_modified_s> <digest> <etag>]" (crawler/schedule.py):
-- it travels with the entry like the extras, so every script that keeps the tail keeps the schedule.
local prefix = ARGV[1]
local function host_of(url)
  return string.match(url, '^%a+://([^/]+)')
end
local function split_entry(entry)
  local depth, attempts, url, tail = string.match(entry, '^(%d+) (%d+) ([^ \t]+)(.*)$')
  return tonumber(depth), tonumber(attempts), url, tail
end
-- A tail split into its extras part ("" or " <extras JSON>") and its recurring state (nil: not recurring).
local function split_tail(tail)
  local extras, recur = string.match(tail, '^([^\t]*)\t(.*)$')
  if extras == nil then return tail, nil end
  return extras, recur
end
local function recur_fields(recur)
  local every, gen = string.match(recur, '^(%d+) (%d+)')
  return tonumber(every), tonumber(gen)
end
local function current_gen()
  return tonumber(redis.call('GET', prefix .. 'recur_gen') or '0')
end
-- Does a recurring URL keep its schedule after this pass? Not when it was cancelled one by one (recur_cancel)
-- or all at once (`crawl schedule --all` bumps recur_gen): then it ends here and stops counting as recurring.
local function keeps_schedule(stats_key, url, recur)
  local _, gen = recur_fields(recur)
  if redis.call('SREM', prefix .. 'recur_cancel', url) == 1 or gen ~= current_gen() then
    redis.call('HINCRBY', stats_key, 'recurring', -1)
    return false
  end
  return true
end
-- A recurring pass that dead-lettered: the failure is shown by `crawl dead` (flagged "recurring"), and the URL
-- waits for its next pass with a fresh attempt count and its stored validators. Counted as a failed pass, not
-- as dead: the URL is scheduled, and counters add up.
local function flag_recurring(err)
  local ok, e = pcall(cjson.decode, err)
  if not ok or type(e) ~= 'table' then e = {kind = 'error'} end
  e.recurring = true
  return cjson.encode(e)
end
-- The schedule is a time wheel: one list per second (`recur:<s>`) holds the entries whose next pass is due then,
-- and the `recur` zset holds the seconds that have entries. A waiting URL costs its entry and a few bytes of
-- list encoding, not a zset node: a zset member per URL is ~100 B of skiplist and dict on top of the entry.
-- A pass is never early: it goes into the first bucket at or after its due time. Buckets are one second wide for
-- short periods and 1/1000 of the period for long ones (21 s for 6 h, at most 10 min), so that a list of URLs
-- spread by the jitter shares few buckets (each costs ~350 B) and a pass is late by at most 0.1% of its period.
local function schedule_pass(recur_key, due_ms, entry, recur)
  local every = recur_fields(recur)
  local width = math.max(1, math.min(600, math.floor(every / 1000)))
  local s = math.ceil(due_ms / 1000 / width) * width
  redis.call('RPUSH', prefix .. 'recur:' .. s, entry)
  redis.call('ZADD', recur_key, 'NX', s * 1000, s)
end
local function recur_due(recur, now, jitter)
  local every = recur_fields(recur)
  return now + math.floor(every * 1000 * (1 + jitter))
end
-- A dead-letter value: "<depth> <attempts> <at_ms> <error JSON>", then "\n<extras JSON>" when the entry had
-- extras (JSON holds no raw newline, so requeue_dead and Frontier.dead_entries split on the first one).
local function dead_value(depth, attempts, now, err, tail)
  local v = depth .. ' ' .. attempts .. ' ' .. now .. ' ' .. err
  tail = split_tail(tail)
  if tail ~= '' then v = v .. '\n' .. string.sub(tail, 2) end
  return v
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
-- Add new entries; returns how many were new. `fps` is the 8-byte fingerprints end to end, `entries` the entries
-- joined by newlines, in the same order: two arguments per batch instead of three per URL (the client's cost of
-- encoding arguments was larger than the script's).
-- A recurring entry arrives as "...\t<every_s>" and is stored with the crawl's schedule generation appended.
local function add_entries(seen_key, hosts_key, stats_key, fps, entries, now, front)
  local added = 0
  local recurring = 0
  local gen = nil
  local touched = {}
  local i = 0
  for entry in string.gmatch(entries, '[^\n]+') do
    local fp = string.sub(fps, i * 8 + 1, i * 8 + 8)
    i = i + 1
    if redis.call('SADD', seen_key, fp) == 1 then
      if string.find(entry, '\t', 1, true) then
        gen = gen or current_gen()
        entry = entry .. ' ' .. gen
        recurring = recurring + 1
      end
      local _, _, url = split_entry(entry)
      local host = host_of(url)
      if front then
        redis.call('LPUSH', prefix .. 'q:' .. host, entry)
      else
        redis.call('RPUSH', prefix .. 'q:' .. host, entry)
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
  if recurring > 0 then redis.call('HINCRBY', stats_key, 'recurring', recurring) end
  return added
end

-- Put dead-lettered URLs back in their queues with a fresh attempt count. The failure of a recurring pass (its
-- error flagged "recurring") is only removed: that URL is already scheduled for its next pass.
-- KEYS: dead, hosts, stats   ARGV: prefix, now_ms, limit
-- Returns how many were requeued.
local dead_key, hosts_key, stats_key = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[2])
local cursor = '0'
local n = 0
local limit = tonumber(ARGV[3])
repeat
  local res = redis.call('HSCAN', dead_key, cursor, 'COUNT', 500)
  cursor = res[1]
  local kv = res[2]
  for i = 1, #kv, 2 do
    if n >= limit then break end
    local url, val = kv[i], kv[i + 1]
    local depth, err = string.match(val, '^(%d+) %d+ %d+ ([^\n]*)')
    local ok, e = pcall(cjson.decode, err)
    redis.call('HDEL', dead_key, url)
    if not (ok and type(e) == 'table' and e.recurring == true) then
      local extras = string.match(val, '\n(.*)$')  -- see dead_value
      local host = host_of(url)
      redis.call('RPUSH', prefix .. 'q:' .. host, depth .. ' 0 ' .. url .. (extras and (' ' .. extras) or ''))
      redis.call('ZADD', hosts_key, 'NX', now, host)
      n = n + 1
    end
  end
until cursor == '0' or n >= limit
if n > 0 then
  redis.call('HINCRBY', stats_key, 'dead', -n)
  redis.call('HINCRBY', stats_key, 'queued', n)
end
return n

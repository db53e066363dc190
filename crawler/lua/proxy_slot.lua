-- Take one fleet-wide gateway connection slot if fewer than `limit` are held (expired slots are dropped first:
-- a SIGKILLed worker's slots free themselves). KEYS: proxy_slots   ARGV: prefix, now_ms, expires_ms, token, limit
-- Returns 1 when the slot was taken, 0 when the fleet is at its limit.
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[4])
  return 1
end
return 0

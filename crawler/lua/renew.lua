-- Extend leases this consumer still owns. ZADD XX never resurrects a lease that was reclaimed meanwhile
-- (the race is proven by tests/test_frontier.py::test_renew_does_not_resurrect_reclaimed_lease).
-- KEYS: leases   ARGV: prefix, deadline_ms, members...
-- Returns the members that are no longer owned (lost).
local lost = {}
local deadline = tonumber(ARGV[2])
for i = 3, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i]) == 0 then
    if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then lost[#lost + 1] = ARGV[i] end
  end
end
return lost

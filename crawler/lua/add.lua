-- Add URLs to the frontier, deduplicated crawl-wide.
-- KEYS: seen, hosts, stats   ARGV: prefix, now_ms, front(0|1), fingerprints (8 bytes each, concatenated),
-- entries (newline-separated, same order)
-- Returns the number of URLs that were new.
return add_entries(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[5], tonumber(ARGV[2]), ARGV[3] == '1')

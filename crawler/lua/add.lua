-- Add URLs to the frontier, deduplicated crawl-wide.
-- KEYS: seen, hosts, stats   ARGV: prefix, now_ms, front(0|1), then (fingerprint, host, entry) triples
-- Returns the number of URLs that were new.
return add_entries(KEYS[1], KEYS[2], KEYS[3], 4, tonumber(ARGV[2]), ARGV[3] == '1')

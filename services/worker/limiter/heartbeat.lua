-- Refresh one worker's heartbeat in the workers' sorted set (member -> expiry, Redis time in
-- ms), drop the expired ones and return how many workers are alive.
-- KEYS[1] workers zset. ARGV[1] member, ARGV[2] ttl_ms, ARGV[3] 'beat' | 'leave'.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
return redis.call('ZCARD', KEYS[1])

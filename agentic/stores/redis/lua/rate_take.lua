-- Take a request from a caller's token bucket (after common.lua): the rule of
-- TokenBucket.take in server/_limits.py, which this must keep identical.
-- KEYS: the bucket hash (tokens, at)
-- ARGV: now ('' = the server's TIME), rate (requests a second), burst
-- Reply: the seconds until a token is there ('0': one was taken)
local now = clock(ARGV[1])
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(stored[1]) or burst, tonumber(stored[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'at', num(now))
-- Left alone, a bucket is full again after burst / rate seconds, and a full bucket
-- is what a missing one means: it can go then (a second later, against rounding).
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return num(wait)

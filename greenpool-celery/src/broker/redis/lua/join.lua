-- The JOIN script: documented at its constant in ../scripts.rs.
local expires = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ready = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
local added = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local size = redis.call('GET', KEYS[3])
if expires > 0 then
  redis.call('EXPIRE', KEYS[1], expires)
  redis.call('EXPIRE', KEYS[2], expires)
  redis.call('EXPIRE', KEYS[3], expires)
end
if not size then return {} end
local total = tonumber(size)
if total == nil or ready ~= total + added then return {} end
local claim = redis.call('GET', KEYS[4])
if claim and claim ~= ARGV[4] then return {} end
redis.call('SET', KEYS[4], ARGV[4], 'EX', 86400)
return redis.call('ZRANGE', KEYS[1], 0, -1)

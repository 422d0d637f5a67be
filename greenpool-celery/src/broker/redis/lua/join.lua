-- The JOIN script: documented at its constant in ../scripts.rs.
local jkey, tkey, skey, dkey, ckey, gkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local value, score, tid = ARGV[1], ARGV[2], ARGV[4]
local expires, claim_expires = tonumber(ARGV[3]), tonumber(ARGV[5])
-- A chord already concluded and cleaned up: a late duplicate does nothing.
if redis.call('GET', ckey) == 'done' then return {} end
-- A part is added once, however often its message comes back.
local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
  redis.call('ZADD', jkey, score, value)
  redis.call('SADD', dkey, member)
end
local ready = redis.call('ZCOUNT', jkey, '-inf', '+inf')
if expires > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey}) do
    redis.call('EXPIRE', key, expires)
  end
end
local added = tonumber(redis.call('GET', tkey) or '0') or 0
local size = tonumber(redis.call('GET', skey) or '')
if size == nil or ready ~= size + added then return {} end
-- Claimed by another part (or worker) whose claim has not expired.
local claim = redis.call('GET', ckey)
if claim and claim ~= tid then return {} end
redis.call('SET', ckey, tid, 'EX', claim_expires)
-- The members, then the header's saved structure ('' when it is flat).
local out = redis.call('ZRANGE', jkey, 0, -1)
table.insert(out, redis.call('GET', gkey) or '')
return out

-- The COMMIT script: documented at its constant in ../scripts.rs.
local expires = tonumber(ARGV[1])
local nstore = tonumber(ARGV[2])
local npush = tonumber(ARGV[3])
local ndone = tonumber(ARGV[4])
local done_secs = tonumber(ARGV[5])
if KEYS[3] ~= '' then
  -- The first write: if the server refuses it (maxmemory), nothing of
  -- the batch is written.
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 86400) then return -1 end
end
local stored = 0
for i = 1, nstore do
  local key = KEYS[3 + i]
  local payload = ARGV[5 + i]
  local cur = redis.pcall('GET', key)
  local keep = false
  if type(cur) == 'string' then
    local ok, meta = pcall(cjson.decode, cur)
    keep = ok and type(meta) == 'table' and meta['status'] == 'SUCCESS'
  end
  if not keep then
    if expires > 0 then
      redis.call('SET', key, payload, 'EX', expires)
    else
      redis.call('SET', key, payload)
    end
    redis.call('PUBLISH', key, payload)
    stored = stored + 1
  end
end
local once = {}
for i = 1, npush do
  local list = KEYS[2 + nstore + 2 * i]
  local guard = KEYS[3 + nstore + 2 * i]
  local go = true
  if guard ~= '' then
    if once[guard] == nil then
      once[guard] = redis.call('SET', guard, '1', 'NX', 'EX', 86400) ~= false
    end
    go = once[guard]
  end
  if go then
    redis.call('LPUSH', list, ARGV[5 + nstore + i])
  end
end
-- Concluded chords: their keys deleted, their claim set to 'done'.
local kbase = 3 + nstore + 2 * npush
for i = 0, ndone - 1 do
  local k = kbase + 5 * i
  redis.call('DEL', KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4])
  redis.call('SET', KEYS[k + 5], 'done', 'EX', done_secs)
end
local first = 6 + nstore + npush
local n = #ARGV
while first <= n do
  local last = math.min(first + 999, n)
  redis.call('ZREM', KEYS[2], unpack(ARGV, first, last))
  redis.call('HDEL', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
end
return stored

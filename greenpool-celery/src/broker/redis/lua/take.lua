-- The TAKE script: documented at its constant in ../scripts.rs.
redis.replicate_commands()
local want = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local single = ARGV[3] == '1'
local out = {}
-- The correlation id of a message too large to be read, by plain searches
-- only (the point is not to work on it).
local function correlation_id(raw)
  local find, sub = string.find, string.sub
  local p = find(raw, '"properties"', 1, true)
  if not p then return '' end
  local k = find(raw, '"correlation_id"', p, true)
  if not k then return '' end
  local _, q1 = find(raw, '^%s*:%s*"', k + 16)
  if not q1 then return '' end
  local q2 = find(raw, '"', q1 + 1, true)
  if not q2 then return '' end
  local v = sub(raw, q1 + 1, q2 - 1)
  if find(v, '\\', 1, true) then return '' end
  return v
end
for i = 1, #KEYS, 2 do
  if want <= 0 then break end
  local queue, flight = KEYS[i], KEYS[i + 1]
  local n = redis.call('LLEN', queue)
  if n > 0 and redis.call('EXISTS', flight) == 0 then
    local take = math.min(n, want)
    want = want - take
    if n <= take and not single then
      -- The whole queue: the list itself becomes the in-flight list,
      -- nothing is copied.
      redis.call('RENAME', queue, flight)
    elseif single then
      for j = 1, take do
        redis.call('LPUSH', flight, redis.call('RPOP', queue))
      end
    else
      -- The first move is a pop: a write Redis does not refuse at
      -- maxmemory, after which the script may finish (as a pop-and-record
      -- script could); the batch is then recorded, or refused, in step 2.
      local first = redis.call('RPOP', queue)
      if take > 1 then
        redis.call('SORT', queue, 'BY', 'nosort', 'LIMIT', n - take, take - 1, 'STORE', flight)
        redis.call('LTRIM', queue, 0, -take)
      end
      redis.call('RPUSH', flight, first)
    end
    if limit > 0 and redis.call('MEMORY', 'USAGE', flight, 'SAMPLES', '0') > limit then
      local items = redis.call('LRANGE', flight, 0, -1)
      local keep, nk = {}, 0
      for j = 1, #items do
        local raw = items[j]
        if #raw > limit then
          out[#out + 1] = (i + 1) / 2
          out[#out + 1] = #raw
          out[#out + 1] = correlation_id(raw)
        else
          nk = nk + 1
          keep[nk] = raw
        end
      end
      if nk < #items then
        redis.call('DEL', flight)
        local j = 1
        while j <= nk do
          local last = math.min(j + 999, nk)
          redis.call('RPUSH', flight, unpack(keep, j, last))
          j = last + 1
        end
      end
    end
  end
end
return out

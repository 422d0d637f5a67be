-- The RETURN script: documented at its constant in ../scripts.rs.
local own = ARGV[2] == '1'
if not own and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local moved = 0
for i = 4, #KEYS, 2 do
  while true do
    local raw = redis.call('LPOP', KEYS[i + 1])
    if not raw then break end
    redis.call('RPUSH', KEYS[i], raw)
    moved = moved + 1
  end
end
if not own then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return moved

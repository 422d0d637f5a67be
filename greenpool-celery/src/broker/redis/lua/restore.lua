-- The RESTORE script: documented at its constant in ../scripts.rs.
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 3, #KEYS do
  if ARGV[3] == '1' then
    redis.call('LPUSH', KEYS[i], ARGV[2])
  else
    redis.call('RPUSH', KEYS[i], ARGV[2])
  end
end
return 1

//! The Lua scripts the broker and backend run inside Redis, and their
//! loading. Each one keeps a multi-step kombu operation atomic and turns
//! many messages' worth of commands into one round trip.

use redis::aio::MultiplexedConnection;

/// Pops up to `ARGV[1]` messages from the queue keys in the given order
/// and records each in `unacked` / `unacked_index` before returning it, so
/// that no message is ever out of both the queue and the unacked hash.
///
/// KEYS: `unacked`, `unacked_index`, then the queue keys (priority-major).
/// ARGV: max messages, delivery time (unix seconds).
/// Returns a flat list of `key, raw, tag` triples; `tag` is empty for a
/// message that is not a readable envelope (it is not recorded).
pub(crate) const FETCH: &str = r#"
-- The tag, exchange and routing key are found with plain substring
-- searches: decoding every envelope with cjson (or scanning it with Lua
-- patterns) costs more than all the other work together. A quote inside
-- a JSON string is escaped, so `"delivery_tag"` followed by `:` and a
-- quote only occurs as a key; the search starts at `"properties"`.
-- Anything unusual falls back to cjson.
local function string_after(raw, key, from)
  local k = string.find(raw, key, from, true)
  if not k then return nil end
  local q1 = string.find(raw, '"', k + #key, true)
  if not q1 or not string.match(string.sub(raw, k + #key, q1 - 1), '^%s*:%s*$') then return nil end
  local q2 = string.find(raw, '"', q1 + 1, true)
  if not q2 then return nil end
  local v = string.sub(raw, q1 + 1, q2 - 1)
  if string.find(v, '\\', 1, true) then return nil end
  return v, q2
end
local function fields(raw)
  local p = string.find(raw, '"properties"', 1, true)
  if p then
    local tag = string_after(raw, '"delivery_tag"', p)
    local d = string.find(raw, '"delivery_info"', p, true)
    if tag and tag ~= '' and d then
      local ex = string_after(raw, '"exchange"', d)
      local rk = string_after(raw, '"routing_key"', d)
      if ex and rk then return tag, '"' .. ex .. '"', '"' .. rk .. '"' end
    end
  end
  local ok, m = pcall(cjson.decode, raw)
  if not (ok and type(m) == 'table' and type(m['properties']) == 'table') then return nil end
  local p = m['properties']
  if type(p['delivery_tag']) ~= 'string' or p['delivery_tag'] == '' then return nil end
  local ex, rk = '', ''
  local di = p['delivery_info']
  if type(di) == 'table' then
    if type(di['exchange']) == 'string' then ex = di['exchange'] end
    if type(di['routing_key']) == 'string' then rk = di['routing_key'] end
  end
  return p['delivery_tag'], cjson.encode(ex), cjson.encode(rk)
end
local want = tonumber(ARGV[1])
local out, zargs, hargs = {}, {}, {}
for i = 3, #KEYS do
  if want <= 0 then break end
  local items = redis.call('RPOP', KEYS[i], want)
  if items then
    for _, raw in ipairs(items) do
      want = want - 1
      local tag, ex, rk = fields(raw)
      if tag then
        zargs[#zargs + 1] = ARGV[2]
        zargs[#zargs + 1] = tag
        hargs[#hargs + 1] = tag
        hargs[#hargs + 1] = '[' .. raw .. ', ' .. ex .. ', ' .. rk .. ']'
      else
        tag = ''
      end
      out[#out + 1] = KEYS[i]
      out[#out + 1] = raw
      out[#out + 1] = tag
    end
  end
end
if #zargs > 0 then
  redis.call('ZADD', KEYS[2], unpack(zargs))
  redis.call('HSET', KEYS[1], unpack(hargs))
end
return out
"#;

/// Stores results unless the stored state is already SUCCESS, then
/// publishes each on its own key (what `AsyncResult.get` listens to).
///
/// KEYS: result keys. ARGV: expiry seconds (0 = no expiry), then one
/// payload per key. Returns how many were stored.
pub(crate) const STORE: &str = r#"
local stored = 0
for i, key in ipairs(KEYS) do
  local payload = ARGV[i + 1]
  local cur = redis.call('GET', key)
  local keep = false
  if cur then
    local ok, meta = pcall(cjson.decode, cur)
    keep = ok and type(meta) == 'table' and meta['status'] == 'SUCCESS'
  end
  if not keep then
    if tonumber(ARGV[1]) > 0 then
      redis.call('SETEX', key, ARGV[1], payload)
    else
      redis.call('SET', key, payload)
    end
    redis.call('PUBLISH', key, payload)
    stored = stored + 1
  end
end
return stored
"#;

/// Puts one unacked message back on its queue lists if it is still unacked.
///
/// KEYS: `unacked`, `unacked_index`, then the destination lists. ARGV: tag,
/// payload (with `redelivered` set), `"1"` to LPUSH (back of the line, as
/// a requeueing reject does) or `"0"` to RPUSH (front, as a restore does).
/// Returns 1 if it was restored.
pub(crate) const RESTORE: &str = r#"
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
"#;

/// Deletes a lock key only if it still holds our token.
pub(crate) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// SHA1 digests of the loaded scripts.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) fetch: String,
    pub(crate) store: String,
    pub(crate) restore: String,
    pub(crate) unlock: String,
}

impl Scripts {
    /// Loads every script (`SCRIPT LOAD` is idempotent), in one round trip.
    pub(crate) async fn load(conn: &mut MultiplexedConnection) -> redis::RedisResult<Self> {
        let mut pipe = redis::pipe();
        for src in [FETCH, STORE, RESTORE, UNLOCK] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(src);
        }
        let (fetch, store, restore, unlock): (String, String, String, String) =
            pipe.query_async(conn).await?;
        Ok(Scripts {
            fetch,
            store,
            restore,
            unlock,
        })
    }
}

//! The Lua scripts the broker and backend run inside Redis, and their
//! loading. Each one keeps a multi-step operation atomic (a script runs
//! whole or, when the server refuses its first write, not at all) and
//! turns many messages' worth of commands into one round trip.

use redis::aio::MultiplexedConnection;

/// Pops up to `ARGV[1]` messages from the queue keys in the given order
/// and records each in `unacked` / `unacked_index` in the same step, so
/// that no message is ever out of both its queue and the unacked hash.
///
/// KEYS: `unacked`, `unacked_index`, then the queue keys (priority-major).
/// ARGV: max messages, delivery time (unix seconds), size limit in bytes
/// (0: none), `"1"` when the server has `RPOP key count` (Redis 6.2+),
/// then for each queue key its queue name as a JSON string.
///
/// Returns a flat list of triples `queue index (1-based), raw, tag`:
/// * a message is recorded under `tag`; `tag` is empty when no delivery
///   tag could be found in it (it is not recorded: the caller logs it and
///   it is gone);
/// * a message over the size limit is not returned: its triple is
///   `queue index, size in bytes (an integer), correlation id or ""`,
///   and it is not recorded either.
///
/// The unacked entry is `[raw, "", queue]`: the default exchange and the
/// queue the message was taken from, so a restore (ours or kombu's) puts
/// it back where it came from whatever its envelope says.
///
/// Its cost is mostly Lua's: every string the script makes (each popped
/// message, each unacked entry) is copied and hashed into Lua's string
/// table, so the script makes no string per message beyond those two and
/// the tag, finds the tag with plain searches (one per usual spacing), and
/// keeps its tables indexed by counters.
pub(crate) const FETCH: &str = r#"
-- Fields are found with plain substring searches: decoding every envelope
-- with cjson costs more than all the other work together. A quote inside
-- a JSON string is escaped, so `"delivery_tag"` followed by `:` and a
-- quote only occurs as a key; the search starts at `"properties"`. The
-- two usual spacings (kombu's `": "` and the compact `":"`) are one plain
-- search each; any other spacing is matched by a pattern, and anything
-- unusual falls back to cjson.
local find, sub, match = string.find, string.sub, string.match
local function property(raw, spaced, compact, key, decode)
  local p = find(raw, '"properties"', 1, true)
  if p then
    local _, e = find(raw, spaced, p, true)
    if not e then _, e = find(raw, compact, p, true) end
    if e then
      local q = find(raw, '"', e + 1, true)
      if q and q > e + 1 then
        local v = sub(raw, e + 1, q - 1)
        if not find(v, '\\', 1, true) then return v end
      end
    end
    local k = find(raw, key, p, true)
    if k then
      local _, q1 = find(raw, '^%s*:%s*"', k + #key)
      if q1 then
        local q2 = find(raw, '"', q1 + 1, true)
        if q2 and q2 > q1 + 1 then
          local v = sub(raw, q1 + 1, q2 - 1)
          if not find(v, '\\', 1, true) then return v end
        end
      end
    end
  end
  if not decode then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if not (ok and type(m) == 'table' and type(m['properties']) == 'table') then return nil end
  local v = m['properties'][decode]
  if type(v) ~= 'string' or v == '' then return nil end
  return v
end
local want = tonumber(ARGV[1])
local stamp = ARGV[2]
local limit = tonumber(ARGV[3])
local counted = ARGV[4] == '1'
local out, zargs, hargs = {}, {}, {}
local no, nz = 0, 0
for i = 3, #KEYS do
  if want <= 0 then break end
  local items
  if counted then
    items = redis.call('RPOP', KEYS[i], want)
  else
    items = {}
    for j = 1, want do
      local one = redis.call('RPOP', KEYS[i])
      if not one then break end
      items[j] = one
    end
  end
  if items then
    -- The unacked entry's tail: the default exchange and this queue.
    local tail = ', "", ' .. ARGV[i + 2] .. ']'
    for j = 1, #items do
      local raw = items[j]
      want = want - 1
      out[no + 1] = i - 2
      if limit > 0 and #raw > limit then
        out[no + 2] = #raw
        -- Searched, never decoded: the point is not to work on it.
        out[no + 3] = property(raw, '"correlation_id": "', '"correlation_id":"', '"correlation_id"', false) or ''
      else
        local tag = property(raw, '"delivery_tag": "', '"delivery_tag":"', '"delivery_tag"', 'delivery_tag')
        if tag then
          zargs[nz + 1] = stamp
          zargs[nz + 2] = tag
          hargs[nz + 1] = tag
          hargs[nz + 2] = '[' .. raw .. tail
          nz = nz + 2
        else
          tag = ''
        end
        out[no + 2] = raw
        out[no + 3] = tag
      end
      no = no + 3
    end
  end
end
-- unpack() takes a bounded number of values: record in slices.
local i = 1
while i <= nz do
  local j = math.min(i + 999, nz)
  redis.call('ZADD', KEYS[2], unpack(zargs, i, j))
  redis.call('HSET', KEYS[1], unpack(hargs, i, j))
  i = j + 1
end
return out
"#;

/// Writes a batch in one atomic step: results first, then follow-up
/// messages, then the acks; a batch sent twice (its first reply lost)
/// pushes once.
///
/// KEYS: `unacked`, `unacked_index`, the batch's once-key (`""` when the
/// batch pushes nothing), then the result keys, then the queue keys of
/// the pushes.
/// ARGV: result expiry seconds (0: none), number of results, number of
/// pushes, then one payload per result, one per push, then the tags to
/// ack.
///
/// A result is stored unless the stored state is already SUCCESS, and
/// PUBLISHed on its key (what `AsyncResult.get` listens to). Returns how
/// many results were stored, or -1 when the batch had already been
/// written.
pub(crate) const COMMIT: &str = r#"
local expires = tonumber(ARGV[1])
local nstore = tonumber(ARGV[2])
local npush = tonumber(ARGV[3])
if KEYS[3] ~= '' then
  -- The first write: if the server refuses it (maxmemory), nothing of
  -- the batch is written.
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 86400) then return -1 end
end
local stored = 0
for i = 1, nstore do
  local key = KEYS[3 + i]
  local payload = ARGV[3 + i]
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
for i = 1, npush do
  redis.call('LPUSH', KEYS[3 + nstore + i], ARGV[3 + nstore + i])
end
local first = 4 + nstore + npush
local n = #ARGV
while first <= n do
  local last = math.min(first + 999, n)
  redis.call('ZREM', KEYS[2], unpack(ARGV, first, last))
  redis.call('HDEL', KEYS[1], unpack(ARGV, first, last))
  first = last + 1
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

/// SHA1 digests of the scripts, the same on every server.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) fetch: String,
    pub(crate) commit: String,
    pub(crate) restore: String,
    pub(crate) unlock: String,
}

impl Scripts {
    /// Loads every script (`SCRIPT LOAD` is idempotent), in one round trip.
    pub(crate) async fn load(conn: &mut MultiplexedConnection) -> redis::RedisResult<Self> {
        let mut pipe = redis::pipe();
        for src in [FETCH, COMMIT, RESTORE, UNLOCK] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(src);
        }
        let (fetch, commit, restore, unlock): (String, String, String, String) =
            pipe.query_async(conn).await?;
        Ok(Scripts {
            fetch,
            commit,
            restore,
            unlock,
        })
    }

    /// A link start hook that loads the scripts on every new connection.
    pub(crate) fn hook() -> crate::conn::link::StartHook {
        Box::new(|mut conn| {
            Box::pin(async move {
                Scripts::load(&mut conn).await?;
                Ok(())
            })
        })
    }
}

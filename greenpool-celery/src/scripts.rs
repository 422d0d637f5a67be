//! The Lua scripts the broker and backend run inside Redis, and their
//! loading. Each one keeps a multi-step operation atomic (a script runs
//! whole or, when the server refuses its first write, not at all) and
//! turns many messages' worth of commands into one round trip.

use redis::aio::MultiplexedConnection;

/// Step 1 of a fetch: moves up to `ARGV[1]` messages from the queue keys,
/// in the given order, each into its own in-flight list of this worker
/// (see [`crate::broker::keys::inflight_key`]). Nothing is lost whatever
/// happens next: a message is in its queue or in an in-flight list at
/// every instant, and an in-flight list is recorded (step 2) or returned
/// to its queue by [`RETURN`].
///
/// KEYS: pairs of (queue key, its in-flight list), priority-major.
/// ARGV: max messages, size limit in bytes (0: none), `"1"` to move one
/// message at a time with `RPOP`/`RPUSH` (for servers where `SORT` is
/// renamed or forbidden).
///
/// A queue key whose in-flight list still holds messages (a fetch whose
/// step 2 did not run yet) is skipped: what is in flight is recorded
/// before more is taken from it.
///
/// An in-flight list keeps its queue's order: the message `RPOP` would
/// give first is on its right. A queue that fits the budget whole is
/// renamed to the in-flight list (nothing is copied). Otherwise the batch
/// is moved with one `RPOP` (then `RPUSH`) and, for the rest,
/// `SORT key BY nosort LIMIT offset n STORE` (the `n` messages at the
/// right end, in list order) and `LTRIM`: but for the first, the
/// messages are copied by Redis itself and never become Lua strings,
/// which is what made a fetch script expensive (about 11 instructions per
/// byte for each string a script makes). The caller reads the in-flight
/// lists with `LRANGE` in the same round trip.
///
/// The size limit costs one `MEMORY USAGE` of the moved batch: only when
/// the whole batch is larger than the limit are its messages measured one
/// by one; those over the limit are removed unread and reported.
///
/// Returns a flat list of triples `pair index (1-based), size in bytes,
/// correlation id or ""`, one per message removed for its size.
pub(crate) const TAKE: &str = r#"
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
"#;

/// Gives a worker's in-flight lists back to their queues, at the front
/// (where `RPOP` takes next) and in the order they were taken, when the
/// worker is dead (its liveness key is gone) or when `ARGV[2]` is `"1"`
/// (a worker returning its own lists).
///
/// KEYS: the worker's liveness key, the set of workers, the worker's
/// in-flight hash, then pairs of (queue key, in-flight list).
/// ARGV: the worker's name, `"1"` to return whatever its liveness.
///
/// For a dead worker it also forgets the worker (set member and hash).
/// Returns how many messages went back, or -1 when the worker is alive.
/// Messages become Lua strings here, which is fine: this runs once per
/// start and per dead worker, not per fetch.
pub(crate) const RETURN: &str = r#"
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
    pub(crate) take: String,
    pub(crate) give_back: String,
    pub(crate) commit: String,
    pub(crate) restore: String,
    pub(crate) unlock: String,
}

impl Scripts {
    /// Loads every script (`SCRIPT LOAD` is idempotent), in one round trip.
    pub(crate) async fn load(conn: &mut MultiplexedConnection) -> redis::RedisResult<Self> {
        let mut pipe = redis::pipe();
        for src in [TAKE, RETURN, COMMIT, RESTORE, UNLOCK] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(src);
        }
        let (take, give_back, commit, restore, unlock): (String, String, String, String, String) =
            pipe.query_async(conn).await?;
        Ok(Scripts {
            take,
            give_back,
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

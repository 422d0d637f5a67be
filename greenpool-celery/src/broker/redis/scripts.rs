//! The Lua scripts the broker and backend run inside Redis, and their
//! loading. Each one keeps a multi-step operation atomic (a script runs
//! whole or, when the server refuses its first write, not at all) and
//! turns many messages' worth of commands into one round trip.
//!
//! The script texts are the `.lua` files in `lua/`, built in with
//! `include_str!`; each constant documents its keys, arguments and reply.

use redis::aio::MultiplexedConnection;

/// Step 1 of a fetch: moves up to `ARGV[1]` messages from the queue keys,
/// in the given order, each into its own in-flight list of this worker
/// (see [`crate::config::RedisKeys::inflight_key`]). Nothing is lost whatever
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
pub(crate) const TAKE: &str = include_str!("lua/take.lua");

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
pub(crate) const RETURN: &str = include_str!("lua/return.lua");

/// Writes a batch in one atomic step: results first, then follow-up
/// messages, then the clean-up of the chords concluded, then the acks; a
/// batch sent twice (its first reply lost) pushes once.
///
/// KEYS: `unacked`, `unacked_index`, the batch's once-key (`""` when the
/// batch pushes nothing), then the result keys, then for each push its
/// queue key and its own once-key (`""`: none), then for each concluded
/// chord its `.j`, `.t`, `.s`, `.d` (deleted) and `.c` (set to `done`).
/// ARGV: result expiry seconds (0: none), number of results, number of
/// pushes, number of concluded chords, seconds `.c` reads `done`, then
/// one payload per result, one per push, then the tags to ack.
///
/// A push with a once-key is made only by the first script run that sets
/// that key (kept a day); pushes sharing a key (one message routed to
/// several queues) are made together or not at all. A chord's body is
/// pushed so, once whatever number of times its join concludes.
///
/// A result is stored unless the stored state is already SUCCESS, and
/// PUBLISHed on its key (what `AsyncResult.get` listens to). Returns how
/// many results were stored, or -1 when the batch had already been
/// written.
pub(crate) const COMMIT: &str = include_str!("lua/commit.lua");

/// Puts one unacked message back on its queue lists if it is still unacked.
///
/// KEYS: `unacked`, `unacked_index`, then the destination lists. ARGV: tag,
/// payload (with `redelivered` set), `"1"` to LPUSH (back of the line, as
/// a requeueing reject does) or `"0"` to RPUSH (front, as a restore does).
/// Returns 1 if it was restored.
pub(crate) const RESTORE: &str = include_str!("lua/restore.lua");

/// Adds a finished chord part to its chord's join, with the keys and
/// steps of Celery's Redis backend (5.7): nothing once the claim key
/// reads `done`; the part added once (`ZADD` scored by its place, and its
/// `id:score` in the `.d` set); the count, the parts added later and the
/// chord's size read, each key's expiry renewed; and the chord claimed
/// (`.c`) when the count reaches the size: see [`crate::canvas::chord`].
///
/// KEYS: `.j`, `.t`, `.s`, `.d`, `.c` of the chord's group, and the
/// group's own key (where a client saves a header holding groups). ARGV: the
/// member, its score, result expiry seconds (0: none), the part's task
/// id, the claim's lifetime in seconds.
///
/// Returns the members in score order, then the group key's value (`""`
/// when none), when this part concludes the chord
/// (the count reached, and the claim free, expired or already this
/// part's: its message came back after a lost worker); an empty list
/// otherwise.
pub(crate) const JOIN: &str = include_str!("lua/join.lua");

/// Deletes a lock key only if it still holds our token.
pub(crate) const UNLOCK: &str = include_str!("lua/unlock.lua");

/// SHA1 digests of the scripts, the same on every server.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) take: String,
    pub(crate) give_back: String,
    pub(crate) commit: String,
    pub(crate) restore: String,
    pub(crate) unlock: String,
    pub(crate) join: String,
}

impl Scripts {
    /// Loads every script (`SCRIPT LOAD` is idempotent), in one round trip.
    pub(crate) async fn load(conn: &mut MultiplexedConnection) -> redis::RedisResult<Self> {
        let mut pipe = redis::pipe();
        for src in [TAKE, RETURN, COMMIT, RESTORE, UNLOCK, JOIN] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(src);
        }
        let (take, give_back, commit, restore, unlock, join): (
            String,
            String,
            String,
            String,
            String,
            String,
        ) = pipe.query_async(conn).await?;
        Ok(Scripts {
            take,
            give_back,
            commit,
            restore,
            unlock,
            join,
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

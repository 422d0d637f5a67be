//! Step 2: a request past its `expires` is discarded as REVOKED
//! ("expired") and acked: when it is received, when its ETA comes, and
//! (in [`super::admit`]) when its job starts. Revoked ids are discarded by
//! `control::hooks::received` and `still_wanted`.

use super::outcome;
use super::settle;
use crate::protocol::TaskMessage;
use crate::worker::Shared;

/// Discards `msg` (REVOKED stored, `task-revoked`, acked by `tag`) when
/// it has expired; true then.
pub(super) fn revoke_if_expired(shared: &Shared, msg: &TaskMessage, tag: &str) -> bool {
    let Some(expires) = msg.headers.expires.filter(|e| e.is_past()) else {
        return false;
    };
    let decision = outcome::expired(msg.headers.ignore_result, Some(expires));
    settle::apply(shared, msg, Some(tag), decision);
    true
}

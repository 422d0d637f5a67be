//! The batcher's chord step: the parts of a batch joined in the result
//! backend (the [`JOIN`](super::scripts::JOIN) script), and what a
//! concluded chord writes added to the same batch: the body (or its link
//! errors) as a follow-up pushed under the chord's once-key, the body's
//! FAILURE as a result, and the chord's group for cleaning up once the
//! batch's broker part is written. What a conclusion is, is decided in
//! [`crate::canvas::chord`].

use super::writes::{store_on, Concluded, FollowUp, Targets};
use crate::backend::{result_key, ResultMeta, TaskState};
use crate::canvas::chord::{conclude, ChordPart, Conclusion, JoinKeys};
use crate::conn::Link;
use crate::error::BrokerError;
use crate::stats::BrokerStats;

/// A chord part waiting for its join.
#[derive(Debug)]
pub(crate) struct Joining {
    /// The part.
    pub(crate) part: ChordPart,
    /// Its still unacked delivery (late ack), whose ack is withheld if
    /// the body cannot be routed.
    pub(crate) origin: Option<String>,
}

/// What the joins of a batch add to it: follow-ups (the bodies), results
/// for its COMMIT (a failed body's, when results share the broker's
/// server), and the groups of the chords to clean up after it.
#[derive(Default)]
pub(super) struct Joined {
    pub(super) follow_ups: Vec<FollowUp>,
    pub(super) store_keys: Vec<String>,
    pub(super) store_payloads: Vec<String>,
    pub(super) cleanup: Vec<String>,
}

/// The link the chord keys live on: the result backend's.
fn backend(t: &Targets) -> &Link {
    t.backend.as_deref().unwrap_or(&t.broker)
}

/// Joins every part of `joins`, in order; what the concluded chords
/// write.
///
/// # Errors
///
/// When the backend's link gives up or the server refuses the script.
pub(super) async fn join_all(
    joins: Vec<Joining>,
    t: &Targets,
    stats: &BrokerStats,
) -> Result<Joined, BrokerError> {
    let link = backend(t);
    let mut b = Joined::default();
    for j in joins {
        let keys = JoinKeys::of(&j.part.group);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&t.scripts.join)
            .arg(6)
            .arg(&keys.joined)
            .arg(&keys.added)
            .arg(&keys.size)
            .arg(&keys.parts)
            .arg(&keys.claim)
            .arg(&keys.group)
            .arg(&j.part.member)
            .arg(&j.part.score)
            .arg(t.result_expires)
            .arg(&j.part.task_id)
            .arg(crate::canvas::chord::CLAIM_SECONDS);
        stats.round_trip();
        let mut members: Vec<Vec<u8>> = link
            .call_until_done("joining a chord part", |mut conn| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut conn).await }
            })
            .await?
            .map_err(BrokerError::Redis)?;
        // Concluded: the members, then the saved header ("" when flat).
        let Some(saved) = members.pop() else {
            continue;
        };
        let saved = (!saved.is_empty()).then_some(saved.as_slice());
        let conclusion = conclude(&j.part, &members, saved);
        write(&mut b, t, stats, &j, conclusion).await?;
    }
    Ok(b)
}

/// Adds what `conclusion` writes to `b` (the body's FAILURE is stored
/// at once when the backend is a separate server, as the batch's results
/// already were).
async fn write(
    b: &mut Joined,
    t: &Targets,
    stats: &BrokerStats,
    j: &Joining,
    conclusion: Conclusion,
) -> Result<(), BrokerError> {
    let keys = JoinKeys::of(&j.part.group);
    let group = crate::repr::cut(&j.part.group, crate::repr::LOG_NAME_MAX);
    let applied = match conclusion {
        Conclusion::Run(a) => {
            tracing::debug!("chord {group}: every part is in, sending its body");
            a
        }
        Conclusion::Fail {
            body_id,
            error,
            errbacks,
        } => {
            tracing::error!("Chord {group} raised: {error}");
            if let Some(id) = body_id {
                let meta = ResultMeta::new(&id, TaskState::Failure, error.to_json());
                match serde_json::to_string(&meta) {
                    Ok(payload) => store(b, t, stats, result_key(&id), payload).await?,
                    Err(e) => tracing::error!("cannot encode the result of {id}: {e}"),
                }
            }
            errbacks
        }
    };
    // A body that starts a chord of its own sets its size first.
    for (id, size) in applied.chord_sizes {
        store(b, t, stats, JoinKeys::of(&id).size, size.to_string()).await?;
    }
    if let Some(forward) = &t.forward {
        let c = Concluded {
            publish: applied.publish,
            origin: j.origin.clone(),
            group: j.part.group.clone(),
        };
        if forward.send(c).is_err() {
            tracing::error!("chord {group}: the broker's writer is gone; its body is not sent");
        }
        return Ok(());
    }
    let publishes = applied.publish;
    for p in publishes {
        if let Some(mut f) = FollowUp::of(p, j.origin.clone()) {
            f.once = Some(keys.once.clone());
            b.follow_ups.push(f);
        }
    }
    b.cleanup.push(j.part.group.clone());
    Ok(())
}

/// Stores the body's result: in the batch's COMMIT when results share
/// the broker's server, else on the backend now.
async fn store(
    b: &mut Joined,
    t: &Targets,
    stats: &BrokerStats,
    key: String,
    payload: String,
) -> Result<(), BrokerError> {
    let Some(link) = t.backend.as_deref() else {
        b.store_keys.push(key);
        b.store_payloads.push(payload);
        return Ok(());
    };
    let keys = [key];
    let payloads = [payload];
    store_on(link, t, stats, &keys, &payloads).await
}

/// Cleans up the chords of `groups` that a written batch concluded, when
/// their keys live on a separate backend (on the broker's own server the
/// batch's COMMIT does it): their keys deleted and the claim set to
/// `done`, as Celery does. A failure is
/// only logged: the keys expire with the results, and the once-key keeps
/// a body from being sent again meanwhile.
pub(super) async fn clean_up(groups: &[String], t: &Targets, stats: &BrokerStats) {
    if groups.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for g in groups {
        let k = JoinKeys::of(g);
        pipe.cmd("DEL")
            .arg(&k.joined)
            .arg(&k.added)
            .arg(&k.size)
            .arg(&k.parts)
            .ignore();
        pipe.cmd("SET")
            .arg(&k.claim)
            .arg("done")
            .arg("EX")
            .arg(crate::canvas::chord::DONE_SECONDS)
            .ignore();
    }
    stats.round_trip();
    let done = backend(t)
        .call_until_done("cleaning up finished chords", |mut conn| {
            let pipe = &pipe;
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await;
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("cannot delete the keys of finished chords: {e}"),
        Err(e) => tracing::warn!("cannot delete the keys of finished chords: {e}"),
    }
}

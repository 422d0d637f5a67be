//! Step 3: a request with an ETA waits on the pool's green timer.

use std::sync::{Mutex, PoisonError};

use crate::protocol::Timestamp;
use crate::seconds::MAX_DURATION;
use crate::worker::Shared;

/// Waits on the pool's green timer until `eta` (priority 6, as Celery
/// enters ETA requests). Returns false when warm shutdown came first.
///
/// An ETA may lie centuries ahead; each timer entry is at most
/// [`MAX_DURATION`] away, so that no clock sum can overflow, and the wait
/// goes on until the ETA has passed.
pub(super) async fn wait_for_eta(shared: &Shared, eta: Timestamp) -> bool {
    let longest = MAX_DURATION;
    while !eta.is_past() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tx = Mutex::new(Some(tx));
        let now = tokio::time::Instant::now();
        let Some(at) = now.checked_add(eta.remaining().min(longest)) else {
            return false;
        };
        let fire = move || {
            if let Some(tx) = tx.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(());
            }
        };
        match shared.timer.call_at(at, fire, 6) {
            Ok(tref) => {
                let fired = tokio::select! {
                    r = rx => r.is_ok(),
                    _ = shared.control.shutdown.cancelled() => {
                        let _ = shared.timer.cancel(&tref);
                        false
                    }
                };
                if !fired {
                    return false;
                }
            }
            Err(e) => {
                // Only after the timer stopped, i.e. during shutdown.
                tracing::debug!("ETA timer refused the entry: {e}");
                return false;
            }
        }
    }
    true
}

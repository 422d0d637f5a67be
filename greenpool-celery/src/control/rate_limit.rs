//! Rate limits per task name: Celery's `"10/s"`, `"100/m"`, `"1000/h"`
//! strings, enforced with a token bucket of capacity one (as Celery's
//! consumer does), so requests of a limited task start at most once per
//! interval and others are not held up.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Parses a Celery rate: `"<n>"` or `"<n>/<s|m|h>"` into tasks per
/// second; `""` and `"0"` mean no limit (`Ok(None)`).
///
/// # Errors
///
/// The message Celery's `rate()` raises, as Python's repr, for anything
/// else.
pub(crate) fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (ops, unit) = text.split_once('/').unwrap_or((text, "s"));
    let per = match unit {
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("KeyError('{other}')")),
    };
    let n: f64 = ops
        .trim()
        .parse()
        .map_err(|_| format!("ValueError(\"could not convert string to float: '{ops}'\")"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("ValueError('invalid rate {n}')"));
    }
    Ok((n > 0.0).then_some(n / per))
}

/// One task's bucket: the rate and the earliest start of the next request.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    interval: Duration,
    next: Instant,
}

/// The rate limits of a worker, by task name.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Sets the limit of `task` to `per_second` (`None`: no limit). A new
    /// bucket starts full, as Celery's do after `reset_rate_limits`.
    pub(crate) fn set(&self, task: &str, per_second: Option<f64>) {
        let mut g = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match per_second {
            Some(r) if r > 0.0 => {
                let interval = Duration::try_from_secs_f64(1.0 / r).unwrap_or(Duration::MAX);
                g.insert(
                    task.to_owned(),
                    Bucket {
                        interval,
                        next: Instant::now(),
                    },
                );
            }
            _ => {
                g.remove(task);
            }
        }
    }

    /// Takes a token for `task`: returns at once when it has no limit or a
    /// token is there, else after the bucket refills. Requests queue in
    /// arrival order.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped wait still used its token.
    pub(crate) async fn acquire(&self, task: &str) {
        let at = {
            let mut g = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(b) = g.get_mut(task) else { return };
            let now = Instant::now();
            let at = b.next.max(now);
            b.next = at.checked_add(b.interval).unwrap_or(at);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_rates() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("120/m"), Ok(Some(2.0)));
        assert_eq!(parse_rate("3600/h"), Ok(Some(1.0)));
        assert_eq!(parse_rate("5"), Ok(Some(5.0)));
        assert_eq!(parse_rate(""), Ok(None));
        assert_eq!(parse_rate("0"), Ok(None));
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("1/d").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_come_once_per_interval() {
        let r = RateLimits::default();
        r.set("t", Some(2.0));
        let t0 = Instant::now();
        r.acquire("t").await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        r.acquire("t").await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        r.acquire("other").await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        r.set("t", None);
        r.acquire("t").await;
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }
}

//! [`SentinelOptions`] and Celery's transport options as JSON
//! ([`TransportOptions`]): what a `sentinel://` URL needs to find its
//! master, read from `broker_transport_options` or
//! `result_backend_transport_options` as a Celery deployment writes them.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// How a `sentinel://` URL finds its master.
///
/// ```
/// use greenpool_celery::TransportOptions;
/// let t = TransportOptions::parse(
///     r#"{"master_name": "mymaster", "sentinel_kwargs": {"password": "s3"}}"#,
///     "broker",
/// ).unwrap();
/// assert_eq!(t.sentinel.master_name.as_deref(), Some("mymaster"));
/// assert_eq!(t.sentinel.sentinel_password.as_deref(), Some("s3"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelOptions {
    /// The name the sentinels monitor the master under (`master_name`).
    pub master_name: Option<String>,
    /// The sentinels' own password (`sentinel_kwargs.password`); the
    /// master's is the URL's.
    pub sentinel_password: Option<String>,
}

/// The transport options greenpool reads; any other key is refused, so
/// that no setting of a deployment is silently ignored.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TransportOptions {
    /// `master_name` and `sentinel_kwargs`.
    pub sentinel: SentinelOptions,
    /// `visibility_timeout` in seconds (broker options only).
    pub visibility_timeout: Option<Duration>,
}

impl TransportOptions {
    /// Reads `json`, the options of the `which` connection (`"broker"` or
    /// `"result backend"`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::TransportOptions`] for text that is not a JSON
    /// object, a value of the wrong type, or a key greenpool does not
    /// support (named, with the ones it does).
    pub fn parse(json: &str, which: &'static str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::TransportOptions { which, reason };
        let map: Map<String, Value> = match serde_json::from_str(json) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad("expected a JSON object".to_owned())),
            Err(e) => return Err(bad(format!("not JSON: {e}"))),
        };
        let mut out = TransportOptions::default();
        for (key, value) in map {
            match (key.as_str(), value) {
                ("master_name", Value::String(s)) if !s.is_empty() => {
                    out.sentinel.master_name = Some(s);
                }
                ("sentinel_kwargs", Value::Object(kw)) => {
                    for (k, v) in kw {
                        match (k.as_str(), v) {
                            ("password", Value::String(p)) => {
                                out.sentinel.sentinel_password = Some(p);
                            }
                            ("password", Value::Null) => {}
                            (other, _) => {
                                return Err(bad(format!(
                                    "sentinel_kwargs.{other} is not supported (only password is)"
                                )))
                            }
                        }
                    }
                }
                ("visibility_timeout", Value::Number(n)) if which == "broker" => {
                    let secs = n.as_f64().unwrap_or(f64::NAN);
                    let d = crate::seconds::duration_from_secs("visibility_timeout", secs)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            bad(format!(
                                "visibility_timeout {n} is not a usable number of seconds"
                            ))
                        })?;
                    out.visibility_timeout = Some(d);
                }
                (key, value) => {
                    let supported = if which == "broker" {
                        "master_name, sentinel_kwargs, visibility_timeout"
                    } else {
                        "master_name, sentinel_kwargs"
                    };
                    return Err(bad(format!(
                        "{key} = {value} is not supported by greenpool (supported: {supported})"
                    )));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_supports_and_refuses_the_rest() {
        let t = TransportOptions::parse(
            r#"{"master_name": "m", "visibility_timeout": 60}"#,
            "broker",
        )
        .unwrap();
        assert_eq!(t.sentinel.master_name.as_deref(), Some("m"));
        assert_eq!(t.visibility_timeout, Some(Duration::from_secs(60)));
        for bad in [
            "[]",
            "not json",
            r#"{"global_keyprefix": "x"}"#,
            r#"{"master_name": 5}"#,
            r#"{"sentinel_kwargs": {"socket_timeout": 1}}"#,
            r#"{"visibility_timeout": -1}"#,
        ] {
            let e = TransportOptions::parse(bad, "broker").unwrap_err();
            assert!(e.to_string().contains("broker"), "{bad}: {e}");
        }
        let e =
            TransportOptions::parse(r#"{"visibility_timeout": 60}"#, "result backend").unwrap_err();
        assert!(
            e.to_string().contains("master_name, sentinel_kwargs"),
            "{e}"
        );
    }
}

//! A remote-control request as kombu's `Mailbox` publishes it, and who
//! it is for.

use serde::Deserialize;
use serde_json::{Map, Value};

#[cfg(feature = "redis")]
use crate::protocol::Envelope;

/// Where the caller waits for replies.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct ReplyTo {
    /// `reply.celery.pidbox`.
    pub(crate) exchange: String,
    /// The caller's oid: its reply list is bound under this key.
    pub(crate) routing_key: String,
}

/// The body of a pidbox message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct ControlRequest {
    /// The command.
    pub(crate) method: String,
    /// Its keyword arguments.
    #[serde(default)]
    pub(crate) arguments: Option<Map<String, Value>>,
    /// Node names it is for; none or empty means every node.
    #[serde(default)]
    pub(crate) destination: Option<Vec<String>>,
    /// A node-name pattern, read with `matcher`.
    #[serde(default)]
    pub(crate) pattern: Option<String>,
    /// `glob` (the only matcher understood here) or `pcre`.
    #[serde(default)]
    pub(crate) matcher: Option<String>,
    /// Echoed in the reply's headers.
    #[serde(default)]
    pub(crate) ticket: Option<String>,
    /// Present when a reply is wanted.
    #[serde(default)]
    pub(crate) reply_to: Option<ReplyTo>,
}

/// Why a pidbox message was not read.
#[cfg(feature = "redis")]
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not a kombu envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error(transparent)]
    Body(#[from] crate::error::ProtocolError),
    #[error("body is not a control request: {0}")]
    Request(#[source] serde_json::Error),
}

impl ControlRequest {
    /// Reads a published envelope; also returns its `clock` header.
    #[cfg(feature = "redis")]
    pub(crate) fn decode(raw: &[u8]) -> Result<(ControlRequest, u64), DecodeError> {
        let env: Envelope = serde_json::from_slice(raw).map_err(DecodeError::Envelope)?;
        let body = match env.properties.body_encoding.as_deref() {
            Some("base64") => crate::protocol::base64::decode(env.body.as_bytes())?,
            _ => env.body.into_bytes(),
        };
        let req = serde_json::from_slice(&body).map_err(DecodeError::Request)?;
        let clock = env
            .headers
            .get("clock")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok((req, clock))
    }

    /// Whether node `hostname` handles this request: named in
    /// `destination`, or matched by `pattern`, or nobody named at all.
    pub(crate) fn is_for(&self, hostname: &str) -> bool {
        if let Some(dest) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return dest.iter().any(|d| d == hostname);
        }
        match (self.pattern.as_deref(), self.matcher.as_deref()) {
            (Some(p), Some("glob")) => glob(p, hostname),
            (Some(p), Some(other)) => {
                tracing::warn!(
                    "control: matcher {other:?} is not supported (pattern {p:?}); use glob"
                );
                false
            }
            _ => true,
        }
    }
}

/// Shell-style matching as Python's `fnmatch`: `*`, `?` and `[...]`
/// (with `!` for negation).
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Backtracking over the last `*`: linear in practice for node names.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class(&p, pi, t[ti]),
            Some(c) if *c == t[ti] => Some(pi + 1),
            _ => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[at] == '['`; the index
/// after the class when it matches. An unclosed `[` is a literal.
fn class(p: &[char], at: usize, c: char) -> Option<usize> {
    let mut i = at + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut hit = false;
    while let Some(&ch) = p.get(i) {
        if ch == ']' && i > start {
            return (hit != negate).then_some(i + 1);
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let hi = p[i + 2];
            hit |= ch <= c && c <= hi;
            i += 3;
        } else {
            hit |= ch == c;
            i += 1;
        }
    }
    (c == '[').then_some(at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_fnmatch() {
        assert!(glob("celery@*", "celery@host"));
        assert!(glob("*@h?st", "w1@host"));
        assert!(!glob("w[0-1]@*", "w2@host"));
        assert!(glob("w[!0-1]@*", "w2@host"));
        assert!(!glob("a*", "b"));
        assert!(glob("*", ""));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn decodes_a_captured_request() {
        use serde_json::json;
        let body = json!({"method": "ping", "arguments": {}, "destination": ["w1@host"],
            "pattern": null, "matcher": null, "ticket": "t1",
            "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid"}});
        let raw = crate::control::envelope::encode(&body, Map::new(), "celery.pidbox", "", 2);
        let (req, _) = ControlRequest::decode(raw.as_bytes()).unwrap();
        assert_eq!(req.method, "ping");
        assert!(req.is_for("w1@host"));
        assert!(!req.is_for("w2@host"));
        assert_eq!(req.reply_to.as_ref().unwrap().routing_key, "oid");
        let all = ControlRequest {
            destination: None,
            ..req.clone()
        };
        assert!(all.is_for("anyone"));
        let pat = ControlRequest {
            destination: None,
            pattern: Some("w1@*".into()),
            matcher: Some("glob".into()),
            ..req
        };
        assert!(pat.is_for("w1@x") && !pat.is_for("w2@x"));
    }
}

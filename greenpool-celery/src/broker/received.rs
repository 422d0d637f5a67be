//! A delivered message as its transport carried it, kept with the request
//! for what reads it again: the retry and the requeue (which send it on)
//! and `inspect reserved` (which lists it).
//!
//! A Redis queue entry is kombu's JSON envelope text, kept as it came; an
//! AMQP delivery is read into an [`Envelope`]'s fields from its headers
//! table, properties and body, never written out as JSON.

use std::borrow::Cow;

use crate::error::ProtocolError;
use crate::protocol::{Envelope, TaskMessage};

/// A message as received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Received {
    /// kombu's envelope as JSON text (a Redis queue entry). Bytes that are
    /// not UTF-8 are replaced (such a message is refused, and the text is
    /// only logged).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Text(String),
    /// An envelope read from a transport's own fields (an AMQP delivery).
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    Fields(Box<Envelope>),
}

impl Received {
    /// The bytes a parsed envelope's body span points into: the whole
    /// text, or the fields' body.
    pub(crate) fn span_base(&self) -> &[u8] {
        match self {
            Received::Text(t) => t.as_bytes(),
            Received::Fields(e) => e.body.as_bytes(),
        }
    }

    /// The envelope, to be changed and sent again; `None` when the text
    /// is not an envelope.
    pub(crate) fn envelope(&self) -> Option<Envelope> {
        match self {
            Received::Text(t) => serde_json::from_str(t).ok(),
            Received::Fields(e) => Some(Envelope::clone(e)),
        }
    }

    /// The task message, read again (for a listing).
    ///
    /// # Errors
    ///
    /// As [`TaskMessage::decode`] fails.
    pub(crate) fn message(&self) -> Result<TaskMessage, ProtocolError> {
        match self {
            Received::Text(t) => TaskMessage::decode(t),
            Received::Fields(e) => TaskMessage::from_envelope_ref(e),
        }
    }

    /// The message as kombu's envelope text: the entry as it came (no
    /// copy), or the fields written as JSON (for a log line of a refused
    /// message).
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Received::Text(t) => Cow::Borrowed(t),
            Received::Fields(e) => Cow::Owned(serde_json::to_string(e).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    #[test]
    fn text_and_fields_read_back_as_the_same_message() {
        let msg = TaskMessage::new("t.add", vec![json!(1), json!("ü")], Map::new());
        let env = msg.to_envelope().unwrap();
        let text = Received::Text(serde_json::to_string(&env).unwrap());
        let fields = Received::Fields(Box::new(env.clone()));
        for r in [&text, &fields] {
            assert_eq!(r.envelope().as_ref(), Some(&env));
            let back = r.message().unwrap();
            assert_eq!(back.headers.id, msg.headers.id);
            assert_eq!(back.args, msg.args);
            assert!(r.text().contains("t.add"));
        }
        assert_eq!(fields.span_base(), env.body.as_bytes());
        let bad = Received::Text("not json".to_owned());
        assert!(bad.envelope().is_none());
        assert!(bad.message().is_err());
        assert_eq!(bad.text(), "not json");
    }
}

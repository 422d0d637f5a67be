//! Every public error of the crate.

/// A queue entry that is not a task message this worker can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The envelope is not the JSON object kombu pushes.
    #[error("envelope is not kombu's JSON object: {0}; was it produced by a kombu Redis client?")]
    Envelope(#[source] serde_json::Error),
    /// The headers have a value of the wrong type.
    #[error("task headers are malformed: {0}")]
    Headers(#[source] serde_json::Error),
    /// The body does not decode to `[args, kwargs, embed]` (v2) or a task dict (v1).
    #[error("task body is malformed: {0}; send JSON `[args, kwargs, embed]`")]
    Body(#[source] serde_json::Error),
    /// The base64 body does not decode.
    #[error("body is not valid base64 at byte {position}: {reason}")]
    Base64 {
        /// Byte offset of the problem.
        position: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// `properties.body_encoding` names an encoding other than base64.
    #[error("body encoding {0:?} is not supported; use base64")]
    BodyEncoding(String),
    /// The body was serialised with something other than JSON.
    #[error(
        "content type {0:?} is not supported; configure the client with task_serializer='json'"
    )]
    ContentType(String),
    /// A required header (`task` or `id`) is missing or empty.
    #[error("required header {0:?} is missing")]
    MissingHeader(&'static str),
    /// `eta`, `expires` or another time is not ISO-8601.
    #[error("{0:?} is not an ISO-8601 timestamp")]
    Timestamp(String),
    /// A value could not be serialised while encoding.
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
}

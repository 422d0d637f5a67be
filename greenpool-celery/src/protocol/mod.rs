//! Celery task messages: protocol v2 (and v1, converted) inside kombu's
//! Redis envelope.

pub(crate) mod base64;
mod charset;
mod envelope;
mod headers;
mod lenient;
mod message;
mod nonfinite;
mod signature;
mod time;
mod timelimit;
mod v1;

pub(crate) use envelope::WireEnvelope;
pub use envelope::{DeliveryInfo, Envelope, Properties};
pub use headers::TaskHeaders;
pub use lenient::kombu_priority;
pub(crate) use message::Rejected;
pub use message::TaskMessage;
pub use signature::{Embed, Signature};
pub use time::Timestamp;
pub use timelimit::TimeLimit;

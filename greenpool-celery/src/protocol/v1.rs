//! Protocol v1: everything in a body dict, converted to v2 on receipt.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::headers::TaskHeaders;
use super::lenient::null_default;
use super::signature::{Embed, Signature};
use super::time::Timestamp;
use super::timelimit::TimeLimit;

/// The body of a v1 message (`as_task_v1`).
#[derive(Debug, Deserialize)]
pub(crate) struct BodyV1 {
    #[serde(default, deserialize_with = "null_default")]
    task: String,
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    args: Vec<Value>,
    #[serde(default, deserialize_with = "null_default")]
    kwargs: Map<String, Value>,
    #[serde(default, deserialize_with = "null_default")]
    retries: u32,
    #[serde(default)]
    eta: Option<Timestamp>,
    #[serde(default)]
    expires: Option<Timestamp>,
    #[serde(default)]
    taskset: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    callbacks: Option<Vec<Signature>>,
    #[serde(default)]
    errbacks: Option<Vec<Signature>>,
    #[serde(default)]
    chord: Option<Signature>,
    #[serde(default)]
    timelimit: TimeLimit,
}

impl BodyV1 {
    /// Splits the v1 body into v2 headers, args, kwargs and embed.
    pub(crate) fn into_v2(self) -> (TaskHeaders, Vec<Value>, Map<String, Value>, Embed) {
        let headers = TaskHeaders {
            lang: Some("py".to_owned()),
            root_id: Some(self.id.clone()),
            task: self.task,
            id: self.id,
            group: self.group.or(self.taskset),
            eta: self.eta,
            expires: self.expires,
            retries: self.retries,
            timelimit: self.timelimit,
            ..TaskHeaders::default()
        };
        let embed = Embed {
            callbacks: self.callbacks,
            errbacks: self.errbacks,
            chain: None,
            chord: self.chord,
        };
        (headers, self.args, self.kwargs, embed)
    }
}

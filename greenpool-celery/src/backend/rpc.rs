//! Celery's rpc:// result backend: each state is a message to the
//! client's own reply queue (the request's `reply_to`), through the
//! default exchange, with `correlation_id` = the task id and the meta JSON
//! as body, as `celery.backends.rpc.RPCBackend.store_result` sends it.

use lapin::types::ShortString;
use lapin::BasicProperties;

use super::meta::ResultMeta;
use crate::broker::amqp::wire::Outgoing;

/// The reply carrying `meta` to queue `reply_to`.
pub(crate) fn reply(meta: &ResultMeta, reply_to: &str) -> Result<Outgoing, serde_json::Error> {
    let body = serde_json::to_vec(meta)?;
    Ok(Outgoing {
        exchange: String::new(),
        routing_key: reply_to.to_owned(),
        body,
        properties: BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_correlation_id(ShortString::from(meta.task_id.as_str()))
            // result_persistent is off by default: transient replies.
            .with_delivery_mode(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TaskState;

    #[test]
    fn a_reply_names_the_task_and_carries_the_meta() {
        let meta = ResultMeta::new("id-1", TaskState::Success, serde_json::json!(42));
        let m = reply(&meta, "reply-q").unwrap();
        assert_eq!(m.routing_key, "reply-q");
        assert_eq!(m.exchange, "");
        assert_eq!(
            m.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some("id-1")
        );
        let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["status"], "SUCCESS");
        assert_eq!(v["result"], 42);
        assert_eq!(v["task_id"], "id-1");
    }
}

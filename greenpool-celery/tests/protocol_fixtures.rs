//! Decoding messages captured from the real Python Celery 5.7 client
//! (`fixtures/capture.py` regenerates them), and encoding them back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

use greenpool_celery::{ProtocolError, TaskMessage, TimeLimit, Timestamp};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap()
}

fn fixture_key(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}.key", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[test]
fn plain_add() {
    let m = TaskMessage::decode(&fixture("v2_add")).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.headers.lang.as_deref(), Some("py"));
    assert_eq!(m.headers.root_id.as_deref(), Some(m.headers.id.as_str()));
    assert_eq!(m.args, vec![json!(2), json!(3)]);
    assert!(m.kwargs.is_empty());
    assert!(m.embed.is_empty());
    assert_eq!(m.headers.timelimit, TimeLimit::default());
    assert!(
        !m.headers.ignore_result,
        "null ignore_result reads as false"
    );
    assert_eq!(m.headers.eta, None);
    assert_eq!(m.properties.delivery_info.exchange, "");
    assert_eq!(m.properties.delivery_info.routing_key, "celery");
    assert_eq!(m.properties.priority, Some(0));
    assert_eq!(
        m.properties.correlation_id.as_deref(),
        Some(m.headers.id.as_str())
    );
    assert_eq!(
        m.properties.delivery_tag.as_ref().map(String::len),
        Some(36)
    );
    assert_eq!(fixture_key("v2_add"), "celery");
}

#[test]
fn every_option_and_json_type_survives() {
    let m = TaskMessage::decode(&fixture("v2_options")).unwrap();
    assert_eq!(m.headers.task, "greenpool.echo");
    assert_eq!(m.headers.id, "00000000-1111-4222-8333-444444444444");
    assert_eq!(
        m.args,
        vec![
            json!("héllo wörld ☃ 🚀"),
            json!({"nested": [1, {"deep": null}], "flag": true}),
            json!(1.5),
            Value::Null,
            json!(false)
        ]
    );
    assert_eq!(m.kwargs["key"], json!("välue"));
    assert_eq!(m.kwargs["list"], json!([1, 2.25, "x"]));
    assert_eq!(m.kwargs["none"], Value::Null);
    // hard first: time_limit=30, soft_time_limit=20.5
    assert_eq!(m.headers.timelimit.hard, Some(30.0));
    assert_eq!(m.headers.timelimit.soft, Some(20.5));
    assert!(m.headers.ignore_result);
    let expires: Timestamp = "2030-01-02T03:04:05.678901+00:00".parse().unwrap();
    assert_eq!(m.headers.expires, Some(expires));
    assert!(m.headers.eta.is_some(), "countdown travels as an eta");
    assert_eq!(m.properties.priority, Some(5));
    assert_eq!(m.properties.delivery_info.routing_key, "other");
    assert_eq!(fixture_key("v2_options"), "other\x06\x163");
}

#[test]
fn link_and_link_error_are_signatures() {
    let m = TaskMessage::decode(&fixture("v2_link")).unwrap();
    let callbacks = m.embed.callbacks.as_ref().unwrap();
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].task(), Some("tasks.mul"));
    assert_eq!(callbacks[0].args(), &[json!(10)]);
    assert!(!callbacks[0].immutable());
    let errbacks = m.embed.errbacks.as_ref().unwrap();
    assert_eq!(errbacks[0].task(), Some("tasks.on_error"));
    assert!(m.embed.chain.is_none());
    assert!(!m.embed.is_empty());
}

#[test]
fn chain_keeps_the_rest_last_first() {
    let m = TaskMessage::decode(&fixture("v2_chain")).unwrap();
    assert_eq!(m.args, vec![json!(1), json!(2)]);
    let chain = m.embed.chain.as_ref().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].args(), &[json!(4)]);
    assert_eq!(chain[1].args(), &[json!(3)]);
    assert!(chain[0].options().unwrap().contains_key("task_id"));
}

#[test]
fn priority_nine_goes_to_its_own_key() {
    let m = TaskMessage::decode(&fixture("v2_priority9")).unwrap();
    assert_eq!(m.properties.priority, Some(9));
    assert_eq!(fixture_key("v2_priority9"), "celery\x06\x169");
}

#[test]
fn protocol_one_is_converted() {
    let m = TaskMessage::decode(&fixture("v1_add")).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
    assert_eq!(m.args, vec![json!(4), json!(5)]);
    assert_eq!(m.kwargs["z"], json!(1));
    assert!(m.headers.eta.is_some());
    assert_eq!(m.headers.timelimit.hard, Some(7.0));
    assert_eq!(m.headers.timelimit.soft, None);
    assert_eq!(m.headers.root_id.as_deref(), Some(m.headers.id.as_str()));
}

#[test]
fn encoding_round_trips_every_fixture() {
    for name in [
        "v2_add",
        "v2_options",
        "v2_link",
        "v2_chain",
        "v2_priority9",
        "v1_add",
    ] {
        let m = TaskMessage::decode(&fixture(name)).unwrap();
        let again = TaskMessage::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(again, m, "{name}");
    }
}

#[test]
fn encoded_envelope_has_kombu_shape() {
    let mut m = TaskMessage::new("tasks.add", vec![json!(2), json!(3)], Default::default());
    m.headers.timelimit = TimeLimit {
        hard: Some(30.0),
        soft: Some(20.0),
    };
    let v: Value = serde_json::from_str(&m.encode().unwrap()).unwrap();
    let python: Value = serde_json::from_str(&fixture("v2_add")).unwrap();
    let keys = |v: &Value, k: &str| {
        let mut ks: Vec<String> = v[k].as_object().unwrap().keys().cloned().collect();
        ks.sort();
        ks
    };
    assert_eq!(keys(&v, "properties"), keys(&python, "properties"));
    assert_eq!(keys(&v, "headers"), keys(&python, "headers"));
    assert_eq!(v["headers"]["timelimit"], json!([30, 20]));
    assert_eq!(v["headers"]["argsrepr"], json!("(2, 3)"));
    assert_eq!(v["content-type"], json!("application/json"));
    assert_eq!(v["properties"]["body_encoding"], json!("base64"));
    assert_eq!(
        v["properties"]["delivery_info"],
        json!({"exchange": "", "routing_key": "celery"})
    );
    // The body decodes to what Python produced for the same call.
    let body = v["body"].as_str().unwrap();
    let py_body = python["body"].as_str().unwrap();
    assert_eq!(
        decode_body(body),
        decode_body(py_body),
        "same [args, kwargs, embed]"
    );
}

fn decode_body(b64: &str) -> Value {
    // Decoding goes through the crate: wrap the body in a minimal v2 envelope.
    let env = json!({
        "body": b64, "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {"task": "x", "id": "y"}, "properties": {"body_encoding": "base64"}
    });
    let m = TaskMessage::decode(&env.to_string()).unwrap();
    json!([m.args, m.kwargs, m.embed])
}

fn with(mut env: Value, path: &[&str], value: Value) -> String {
    let mut cur = &mut env;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = value;
    env.to_string()
}

#[test]
fn malformed_messages_say_what_is_wrong() {
    let good: Value = serde_json::from_str(&fixture("v2_add")).unwrap();
    let e = TaskMessage::decode("{not json").unwrap_err();
    assert!(matches!(e, ProtocolError::Envelope(_)), "{e}");
    let e = TaskMessage::decode(&with(good.clone(), &["body"], json!("@@@"))).unwrap_err();
    assert!(matches!(e, ProtocolError::Base64 { .. }), "{e}");
    let e = TaskMessage::decode(&with(good.clone(), &["headers", "task"], json!(""))).unwrap_err();
    assert!(matches!(e, ProtocolError::MissingHeader("task")), "{e}");
    let mut no_id = good.clone();
    no_id["headers"].as_object_mut().unwrap().remove("id");
    let e = TaskMessage::decode(&no_id.to_string()).unwrap_err();
    assert!(matches!(e, ProtocolError::MissingHeader("id")), "{e}");
    let e = TaskMessage::decode(&with(
        good.clone(),
        &["content-type"],
        json!("application/x-python-serialize"),
    ))
    .unwrap_err();
    assert!(matches!(e, ProtocolError::ContentType(_)), "{e}");
    let e =
        TaskMessage::decode(&with(good.clone(), &["headers", "eta"], json!("soon"))).unwrap_err();
    assert!(e.to_string().contains("ISO-8601"), "{e}");
    // base64 of `{"a": 1}`: valid JSON, wrong shape for a v2 body.
    let e = TaskMessage::decode(&with(good.clone(), &["body"], json!("eyJhIjogMX0="))).unwrap_err();
    assert!(matches!(e, ProtocolError::Body(_)), "{e}");
}

#[test]
fn unknown_header_keys_are_ignored() {
    let good: Value = serde_json::from_str(&fixture("v2_add")).unwrap();
    let raw = with(good, &["headers", "x-custom-thing"], json!({"a": [1, 2]}));
    let m = TaskMessage::decode(&raw).unwrap();
    assert_eq!(m.headers.task, "tasks.add");
}

#[test]
fn two_element_body_has_empty_embed() {
    let good: Value = serde_json::from_str(&fixture("v2_add")).unwrap();
    // base64 of `[[1], {}]`
    let m = TaskMessage::decode(&with(good, &["body"], json!("W1sxXSwge31d"))).unwrap();
    assert_eq!(m.args, vec![json!(1)]);
    assert!(m.embed.is_empty());
}

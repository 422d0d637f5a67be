//! Unit tests of the chord join's decisions.

use serde_json::{json, Map, Value};

use super::*;

/// A header part of the chord of group `g1` whose body is `body`.
fn header(index: Option<i64>, body: Value) -> TaskMessage {
    let mut msg = TaskMessage::new("t.add", vec![json!(1), json!(2)], Map::new());
    msg.headers.id = "p1".to_owned();
    msg.headers.root_id = Some("root".to_owned());
    msg.headers.group = Some("g1".to_owned());
    msg.headers.group_index = index;
    msg.properties.priority = Some(4);
    msg.embed.chord = Some(Signature(body.as_object().cloned().unwrap_or_default()));
    msg
}

fn body() -> Value {
    json!({
        "task": "t.tsum", "args": [10], "kwargs": {}, "immutable": false,
        "options": {"task_id": "b1", "link_error": [
            {"task": "t.on_err", "args": [], "kwargs": {}, "options": {}, "immutable": false}
        ]},
        "subtask_type": null,
    })
}

#[test]
fn only_the_end_of_a_header_part_is_a_chord_part() {
    let msg = header(Some(2), body());
    let p = part(&msg, TaskState::Success, &json!(3)).unwrap();
    assert_eq!(p.group, "g1");
    assert_eq!(p.task_id, "p1");
    assert_eq!(p.score, "2");
    let member: Value = serde_json::from_str(&p.member).unwrap();
    assert_eq!(member, json!([1, "p1", "SUCCESS", 3]));
    assert_eq!(p.parent.id, "p1");
    assert_eq!(p.parent.root_id.as_deref(), Some("root"));
    assert!(part(&msg, TaskState::Failure, &json!({})).is_some());
    assert!(part(&msg, TaskState::Revoked, &json!({})).is_some());
    // A retry or a start is not an end.
    assert!(part(&msg, TaskState::Retry, &json!({})).is_none());
    assert!(part(&msg, TaskState::Started, &json!({})).is_none());
    // No index: scored last, as Celery does.
    assert_eq!(
        part(&header(None, body()), TaskState::Success, &json!(1))
            .unwrap()
            .score,
        "+inf"
    );
    // Not a chord part: no body, or no group.
    let mut plain = header(Some(0), body());
    plain.embed.chord = None;
    assert!(part(&plain, TaskState::Success, &json!(1)).is_none());
    let mut no_group = header(Some(0), body());
    no_group.headers.group = Some(String::new());
    assert!(part(&no_group, TaskState::Success, &json!(1)).is_none());
}

#[test]
fn the_last_part_sends_the_body_with_the_results_in_order() {
    let p = part(&header(Some(0), body()), TaskState::Success, &json!(3)).unwrap();
    let members: Vec<Vec<u8>> = vec![
        br#"[1, "p1", "SUCCESS", 3]"#.to_vec(),
        br#"[1, "p2", "SUCCESS", {"a": [7]}]"#.to_vec(),
    ];
    let Conclusion::Run(applied) = conclude(&p, &members, None) else {
        panic!("the body should run");
    };
    let [publish] = <[_; 1]>::try_from(applied.publish).unwrap();
    assert_eq!(publish.routing_key, "celery");
    assert_eq!(publish.priority, Some(4));
    let m = TaskMessage::from_envelope(publish.message).unwrap();
    assert_eq!(m.headers.task, "t.tsum");
    assert_eq!(m.headers.id, "b1");
    assert_eq!(m.args, vec![json!([3, {"a": [7]}]), json!(10)]);
    assert_eq!(m.headers.parent_id.as_deref(), Some("p1"));
    assert_eq!(m.headers.root_id.as_deref(), Some("root"));
}

#[test]
fn an_immutable_body_gets_no_results() {
    let mut b = body();
    b["immutable"] = json!(true);
    let p = part(&header(Some(0), b), TaskState::Success, &json!(3)).unwrap();
    let Conclusion::Run(applied) = conclude(&p, &[br#"[1, "p1", "SUCCESS", 3]"#.to_vec()], None)
    else {
        panic!("the body should run");
    };
    let publish = applied.publish[0].clone();
    let m = TaskMessage::from_envelope(publish.message).unwrap();
    assert_eq!(m.args, vec![json!(10)]);
}

#[test]
fn a_failed_part_fails_the_body_and_calls_its_link_errors() {
    let p = part(&header(Some(0), body()), TaskState::Success, &json!(3)).unwrap();
    let failed = json!([1, "p2", "FAILURE", {
        "exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"
    }])
    .to_string();
    let members = vec![br#"[1, "p1", "SUCCESS", 3]"#.to_vec(), failed.into_bytes()];
    let Conclusion::Fail {
        body_id,
        error,
        errbacks,
    } = conclude(&p, &members, None)
    else {
        panic!("the body should fail");
    };
    assert_eq!(body_id.as_deref(), Some("b1"));
    assert_eq!(error.exc_type(), "ChordError");
    assert_eq!(error.exc_module(), "celery.exceptions");
    assert_eq!(
        error.args(),
        &[json!("Dependency p2 raised ValueError('boom')")]
    );
    assert_eq!(errbacks.publish.len(), 1);
    let eb = TaskMessage::from_envelope(errbacks.publish[0].message.clone()).unwrap();
    assert_eq!(eb.headers.task, "t.on_err");
    assert_eq!(eb.args, vec![json!("b1")]);
    // A revoked part fails the body too.
    let revoked = json!([1, "p3", "REVOKED", {
        "exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery.exceptions"
    }])
    .to_string();
    assert!(matches!(
        conclude(&p, &[revoked.into_bytes()], None),
        Conclusion::Fail { .. }
    ));
}

#[test]
fn an_unreadable_member_is_a_join_error() {
    let p = part(&header(Some(0), body()), TaskState::Success, &json!(3)).unwrap();
    let Conclusion::Fail { error, .. } = conclude(&p, &[b"not json".to_vec()], None) else {
        panic!("the body should fail");
    };
    assert!(error.args()[0]
        .as_str()
        .is_some_and(|m| m.starts_with("Join error")));
}

#[test]
fn the_keys_are_celerys() {
    let k = JoinKeys::of("g1");
    assert_eq!(k.joined, "celery-taskset-meta-g1.j");
    assert_eq!(k.added, "celery-taskset-meta-g1.t");
    assert_eq!(k.size, "celery-taskset-meta-g1.s");
    assert_eq!(k.parts, "celery-taskset-meta-g1.d");
    assert_eq!(k.claim, "celery-taskset-meta-g1.c");
    assert_eq!(k.group, "celery-taskset-meta-g1");
    assert_eq!(k.once, "greenpool.chord.g1");
}

#[test]
fn a_header_saved_with_groups_gets_its_results_nested() {
    let p = part(&header(Some(0), body()), TaskState::Success, &json!(3)).unwrap();
    let members = vec![
        br#"[1, "a", "SUCCESS", 1]"#.to_vec(),
        br#"[1, "b", "SUCCESS", 2]"#.to_vec(),
        br#"[1, "c", "SUCCESS", 3]"#.to_vec(),
    ];
    // chord([group(a, b), c], body), as GroupResult.as_tuple() saves it.
    let saved = json!({"result": [["g1", null], [
        [["g2", null], [[["a", null], null], [["b", null], null]]],
        [["c", null], null]
    ]]})
    .to_string();
    let Conclusion::Run(applied) = conclude(&p, &members, Some(saved.as_bytes())) else {
        panic!("the body should run");
    };
    let m = TaskMessage::from_envelope(applied.publish[0].message.clone()).unwrap();
    assert_eq!(m.args[0], json!([[1, 2], 3]));
    // A saved header naming a part that never joined is a join error.
    let short = json!({"result": [["g1", null], [[["zz", null], null]]]}).to_string();
    assert!(matches!(
        conclude(&p, &members, Some(short.as_bytes())),
        Conclusion::Fail { .. }
    ));
}

//! Unit tests of [`super::apply`]: one per form.

use serde_json::json;

use super::*;
use crate::protocol::TaskMessage;

fn sig(v: Value) -> Signature {
    Signature(v.as_object().cloned().unwrap_or_default())
}

fn task(name: &str, args: Value) -> Value {
    json!({"task": name, "args": args, "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false})
}

fn parent() -> TaskHeaders {
    TaskHeaders {
        task: "t.first".into(),
        id: "p1".into(),
        ..TaskHeaders::default()
    }
}

fn caller(parent: &TaskHeaders, joins_chords: bool) -> Caller<'_> {
    Caller {
        parent: Some(parent),
        priority: Some(3),
        joins_chords,
    }
}

fn messages(a: &Applied) -> Vec<TaskMessage> {
    a.publish
        .iter()
        .map(|p| TaskMessage::from_envelope(p.message.clone()).unwrap())
        .collect()
}

#[test]
fn a_chain_sends_its_first_task_carrying_the_rest_before_the_outer_rest() {
    let p = parent();
    let chain = sig(
        json!({"task": "celery.chain", "subtask_type": "chain", "options": {},
        "kwargs": {"tasks": [task("t.a", json!([1])), task("t.b", json!([2])), task("t.c", json!([3]))]}}),
    );
    let outer = vec![sig(task("t.z", json!([])))];
    let a = apply(&chain, Some(&json!(10)), outer, caller(&p, true)).unwrap();
    let m = messages(&a);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].headers.task, "t.a");
    assert_eq!(m[0].args, vec![json!(10), json!(1)]);
    // Last task first: t.z after t.c after t.b.
    let rest: Vec<_> = m[0]
        .embed
        .chain
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.task().unwrap().to_owned())
        .collect();
    assert_eq!(rest, ["t.z", "t.c", "t.b"]);
    assert!(a.chord_sizes.is_empty());
}

#[test]
fn a_group_sends_each_member_with_its_group_and_place() {
    let p = parent();
    let mut immutable = task("t.b", json!([2]));
    immutable["immutable"] = json!(true);
    let group = sig(json!({"task": "celery.group", "subtask_type": "group",
        "options": {"task_id": "g1"},
        "kwargs": {"tasks": [task("t.a", json!([1])), immutable]}}));
    let a = apply(&group, Some(&json!(10)), Vec::new(), caller(&p, false)).unwrap();
    let m = messages(&a);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].args, vec![json!(10), json!(1)]);
    assert_eq!(
        m[1].args,
        vec![json!(2)],
        "an immutable member takes no result"
    );
    for (i, msg) in m.iter().enumerate() {
        assert_eq!(msg.headers.group.as_deref(), Some("g1"));
        assert_eq!(msg.headers.group_index, Some(i as i64));
        assert_eq!(msg.headers.parent_id.as_deref(), Some("p1"));
        assert!(msg.embed.chord.is_none());
    }
    assert!(a.chord_sizes.is_empty());
    assert_eq!(a.publish[0].priority, Some(3));
}

#[test]
fn a_chord_sends_its_header_carrying_the_body_after_setting_its_size() {
    let p = parent();
    let chord = sig(json!({"task": "celery.chord", "subtask_type": "chord",
        "options": {"task_id": "c1"},
        "kwargs": {"kwargs": {},
            "header": {"task": "celery.group", "subtask_type": "group", "options": {"task_id": "c1"},
                "kwargs": {"tasks": [task("t.a", json!([1])), task("t.a", json!([2])), task("t.a", json!([3]))]}},
            "body": task("t.sum", json!([]))}}));
    let a = apply(&chord, None, Vec::new(), caller(&p, true)).unwrap();
    assert_eq!(a.chord_sizes, vec![("c1".to_owned(), 3)]);
    let m = messages(&a);
    assert_eq!(m.len(), 3);
    for (i, msg) in m.iter().enumerate() {
        assert_eq!(msg.args, vec![json!(i + 1)]);
        assert_eq!(msg.headers.group.as_deref(), Some("c1"));
        assert_eq!(msg.headers.group_index, Some(i as i64));
        assert_eq!(
            msg.embed.chord.as_ref().and_then(Signature::task),
            Some("t.sum")
        );
    }
    // A header given as a plain list, and no chord id: a new group id.
    let listed = sig(
        json!({"task": "celery.chord", "subtask_type": "chord", "options": {},
        "kwargs": {"header": [task("t.a", json!([1]))], "body": task("t.sum", json!([]))}}),
    );
    let a = apply(&listed, None, Vec::new(), caller(&p, true)).unwrap();
    assert_eq!(a.chord_sizes.len(), 1);
    assert_eq!(
        messages(&a)[0].headers.group.as_deref(),
        Some(a.chord_sizes[0].0.as_str())
    );
    // Without a backend that joins, a visible error.
    let e = apply(&chord, None, Vec::new(), caller(&p, false)).unwrap_err();
    assert_eq!(e.exc_type(), "NotImplementedError");
    assert!(e.to_string().contains("rpc://"), "{e}");
}

#[test]
fn what_cannot_be_applied_is_an_error_not_a_skip() {
    let p = parent();
    let c = caller(&p, true);
    let odd = sig(json!({"task": "x", "subtask_type": "weird", "options": {}}));
    assert_eq!(
        apply(&odd, None, Vec::new(), c).unwrap_err().exc_type(),
        "NotImplementedError"
    );
    let group = sig(
        json!({"task": "celery.group", "subtask_type": "group", "options": {},
        "kwargs": {"tasks": [task("t.a", json!([]))]}}),
    );
    let more = vec![sig(task("t.z", json!([])))];
    assert!(apply(&group, None, more, c).is_err());
    let nested = sig(
        json!({"task": "celery.group", "subtask_type": "group", "options": {},
        "kwargs": {"tasks": [group.0.clone()]}}),
    );
    assert!(apply(&nested, None, Vec::new(), c).is_err());
    let empty = sig(json!({"task": "celery.group", "subtask_type": "group", "options": {}}));
    assert_eq!(
        apply(&empty, None, Vec::new(), c).unwrap_err().exc_type(),
        "ValueError"
    );
}

#[test]
fn a_chord_followed_by_more_steps_hands_them_to_its_body() {
    let p = parent();
    let chord = sig(
        json!({"task": "celery.chord", "subtask_type": "chord", "options": {},
        "kwargs": {"header": [task("t.a", json!([1]))], "body": task("t.sum", json!([]))}}),
    );
    let rest = vec![sig(task("t.z", json!([]))), sig(task("t.y", json!([])))];
    let a = apply(&chord, None, rest, caller(&p, true)).unwrap();
    let m = messages(&a);
    let body = m[0].embed.chord.as_ref().unwrap();
    let carried: Vec<_> = body.options().unwrap()["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["task"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(carried, ["t.z", "t.y"], "last step first, as given");
    // Not to the header parts themselves.
    assert!(m[0].embed.chain.is_none());
}

//! Reading `broker_transport_options` / `result_backend_transport_options`.

use std::time::Duration;

use super::*;

fn broker(json: &str) -> TransportOptions {
    TransportOptions::parse(json, "broker").unwrap()
}

fn refused(json: &str, which: &'static str) -> String {
    TransportOptions::parse(json, which)
        .unwrap_err()
        .to_string()
}

#[test]
fn reads_what_it_supports_and_refuses_the_rest() {
    let t = broker(r#"{"master_name": "m", "visibility_timeout": 60}"#);
    assert_eq!(t.sentinel.master_name.as_deref(), Some("m"));
    assert_eq!(t.visibility_timeout, Some(Duration::from_secs(60)));
    for bad in [
        "[]",
        "not json",
        r#"{"master_name": 5}"#,
        r#"{"sentinel_kwargs": {"socket_timeout": 1}}"#,
        r#"{"visibility_timeout": -1}"#,
        r#"{"nonsense": 1}"#,
    ] {
        let e = refused(bad, "broker");
        assert!(e.contains("broker"), "{bad}: {e}");
    }
    let e = refused(r#"{"visibility_timeout": 60}"#, "result backend");
    assert!(e.contains("master_name, sentinel_kwargs"), "{e}");
    let e = refused(r#"{"nonsense": 1}"#, "broker");
    assert!(e.contains("supported: master_name"), "{e}");
}

#[test]
fn defaults_are_kombus() {
    let t = broker("{}");
    assert_eq!(t.keys, RedisKeys::default());
    assert_eq!(t.keys.global_keyprefix, "");
    assert_eq!(t.keys.sep, "\x06\x16");
    assert_eq!(t.keys.priority_steps, [0, 3, 6, 9]);
    assert_eq!(t.keys.fanout_prefix, "/{db}.");
    assert!(t.keys.fanout_patterns);
    assert_eq!(t.queue_order_strategy, QueueOrder::RoundRobin);
    assert_eq!(t.socket, SocketOptions::default());
}

#[test]
fn key_names_are_read() {
    let t = broker(
        r#"{"global_keyprefix": "gp:", "sep": ":", "priority_steps": [0, 5],
            "unacked_key": "u", "unacked_index_key": "ui", "unacked_mutex_key": "um",
            "fanout_prefix": "/x.", "fanout_patterns": false, "ack_emulation": true}"#,
    );
    assert_eq!(t.keys.global_keyprefix, "gp:");
    assert_eq!(t.keys.sep, ":");
    assert_eq!(t.keys.priority_steps, [0, 5]);
    assert_eq!(t.keys.unacked_key, "u");
    assert_eq!(t.keys.unacked_index_key, "ui");
    assert_eq!(t.keys.unacked_mutex_key, "um");
    assert_eq!(t.keys.fanout_prefix, "/x.");
    assert!(!t.keys.fanout_patterns);
    assert_eq!(broker(r#"{"fanout_prefix": false}"#).keys.fanout_prefix, "");
    assert_eq!(
        broker(r#"{"fanout_prefix": true}"#).keys.fanout_prefix,
        "/{db}."
    );
}

#[test]
fn key_names_of_the_wrong_type_or_shape_are_refused() {
    for bad in [
        r#"{"global_keyprefix": 1}"#,
        r#"{"global_keyprefix": null}"#,
        r#"{"sep": ""}"#,
        r#"{"sep": 5}"#,
        r#"{"priority_steps": []}"#,
        r#"{"priority_steps": [0, 3, 3]}"#,
        r#"{"priority_steps": [5, 1]}"#,
        r#"{"priority_steps": [-1]}"#,
        r#"{"priority_steps": [0, 256]}"#,
        r#"{"priority_steps": [0, 1.5]}"#,
        r#"{"priority_steps": "0,3"}"#,
        r#"{"unacked_key": ""}"#,
        r#"{"fanout_prefix": 3}"#,
        r#"{"fanout_patterns": "yes"}"#,
        r#"{"ack_emulation": false}"#,
    ] {
        let e = refused(bad, "broker");
        assert!(e.starts_with("broker transport options"), "{bad}: {e}");
    }
    let e = refused(r#"{"priority_steps": [0, 3, 3]}"#, "broker");
    assert!(e.contains("strictly increasing"), "{e}");
    let e = refused(r#"{"ack_emulation": false}"#, "broker");
    assert!(e.contains("ack_emulation must be true"), "{e}");
    let e = refused(r#"{"fanout_patterns": "yes"}"#, "broker");
    assert!(e.contains("not a usable value"), "{e}");
}

#[test]
fn queue_order_strategies_are_kombus_names() {
    for (name, order) in [
        ("round_robin", QueueOrder::RoundRobin),
        ("sorted", QueueOrder::Sorted),
        ("priority", QueueOrder::Priority),
    ] {
        let t = broker(&format!(r#"{{"queue_order_strategy": "{name}"}}"#));
        assert_eq!(t.queue_order_strategy, order);
    }
    let e = refused(r#"{"queue_order_strategy": "fair"}"#, "broker");
    assert!(e.contains("round_robin, sorted, priority"), "{e}");
    assert!(TransportOptions::parse(r#"{"queue_order_strategy": 1}"#, "broker").is_err());
}

#[test]
fn health_check_interval_is_seconds_and_zero_is_the_default() {
    let t = broker(r#"{"health_check_interval": 2.5}"#);
    assert_eq!(
        t.socket.health_check_interval,
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        broker(r#"{"health_check_interval": 0}"#)
            .socket
            .health_check_interval,
        None
    );
    for key in [
        "health_check_interval",
        "socket_timeout",
        "socket_connect_timeout",
    ] {
        let e = refused(&format!(r#"{{"{key}": 5}}"#), "result backend");
        assert!(e.contains("not a result backend transport option"), "{e}");
    }
    for bad in [
        r#"{"health_check_interval": -1}"#,
        r#"{"health_check_interval": "5"}"#,
        r#"{"health_check_interval": 1e300}"#,
    ] {
        assert!(TransportOptions::parse(bad, "broker").is_err(), "{bad}");
    }
}

#[test]
fn known_options_that_are_not_honoured_say_why() {
    for key in [
        "max_connections",
        "socket_keepalive",
        "retry_on_timeout",
        "retry_policy",
        "unacked_restore_interval",
        "unacked_mutex_expire",
        "client_name",
    ] {
        let e = refused(&format!(r#"{{"{key}": 1}}"#), "broker");
        assert!(
            e.contains(&format!("{key} is not supported by greenpool: ")),
            "{e}"
        );
    }
    let e = refused(r#"{"global_keyprefix": "gp:"}"#, "result backend");
    assert!(e.contains("result backend key prefix"), "{e}");
    for key in [
        "sep",
        "priority_steps",
        "queue_order_strategy",
        "fanout_prefix",
    ] {
        let e = refused(&format!(r#"{{"{key}": 1}}"#), "result backend");
        assert!(e.contains("supported: master_name"), "{e}");
    }
}

#[test]
fn socket_timeouts_are_seconds_and_null_is_the_default() {
    let t = broker(r#"{"socket_timeout": 5, "socket_connect_timeout": 0.5}"#);
    assert_eq!(t.socket.socket_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        t.socket.socket_connect_timeout,
        Some(Duration::from_millis(500))
    );
    let t = broker(r#"{"socket_timeout": null, "socket_connect_timeout": null}"#);
    assert_eq!(t.socket, SocketOptions::default());
    for bad in [
        r#"{"socket_timeout": 0}"#,
        r#"{"socket_timeout": -2}"#,
        r#"{"socket_connect_timeout": "5"}"#,
    ] {
        let e = refused(bad, "broker");
        assert!(e.starts_with("broker transport options"), "{bad}: {e}");
    }
}

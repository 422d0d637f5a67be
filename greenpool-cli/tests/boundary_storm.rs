//! A storm of malformed messages against the `greenpool worker` binary on
//! its own redis-server: 2,000 bad messages of every kind the worker
//! reads at its boundary, mixed with 100 valid ones (some with odd
//! priorities, UTF-16 bodies and integers beyond 64 bits). Every valid
//! one is done, every bad one is logged exactly once (and gets a FAILURE
//! when it names a task id), and the queue and `unacked` end empty.

#![cfg(feature = "redis")] // `greenpool worker` on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

#[path = "../../greenpool-celery/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use greenpool_celery::TaskMessage;
use redis::Commands;
use serde_json::{json, Map, Value};
use support::process::Proc;
use support::RedisServer;

const BAD: usize = 2_000;
const VALID: usize = 100;
/// 2**200.
const BIG: &str = "1606938044258990275541962092341162602522202993782792835301376";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A stock v2 message for `name(*args)` as a JSON object, with `_m` (the
/// first key once serialised) set to `marker` so the log line shows it.
fn stock(name: &str, args: Vec<Value>, marker: &str) -> (String, Value) {
    let m = TaskMessage::new(name, args, Map::new());
    let id = m.headers.id.clone();
    let mut v: Value = serde_json::from_str(&m.encode().unwrap()).unwrap();
    if !marker.is_empty() {
        v["_m"] = json!(marker);
    }
    (id, v)
}

/// One malformed message of kind `k` (20 kinds): its text, and whether a FAILURE is
/// stored under its marker (used as the task id where it has one).
fn bad(k: usize, marker: &str) -> (&'static str, Vec<u8>, bool) {
    let with_id = |name: &str, args: Vec<Value>| {
        let (_, mut v) = stock(name, args, marker);
        v["headers"]["id"] = json!(marker);
        v
    };
    let body = |v: &mut Value, text: &[u8]| v["body"] = json!(b64(text));
    match k % 20 {
        0 => (
            "not JSON",
            format!("{marker} {{{{ not json").into_bytes(),
            false,
        ),
        1 => (
            "JSON array",
            format!("[\"{marker}\", 1]").into_bytes(),
            false,
        ),
        2 => {
            let mut v = with_id("greenpool.add", vec![]);
            v["body"] = json!("@@not base64@@");
            ("bad base64", v.to_string().into_bytes(), true)
        }
        3 => {
            let mut v = with_id("greenpool.add", vec![]);
            v["body"] = json!(5);
            ("body not a string", v.to_string().into_bytes(), true)
        }
        4 => {
            let (_, mut v) = stock("greenpool.add", vec![json!(1), json!(2)], marker);
            v["headers"] = json!(null);
            ("missing headers", v.to_string().into_bytes(), false)
        }
        5 => {
            let (_, mut v) = stock("greenpool.add", vec![json!(1), json!(2)], marker);
            v["headers"] = json!("garbage");
            ("garbage headers", v.to_string().into_bytes(), false)
        }
        6 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["headers"]["retries"] = json!("many");
            v["headers"]["eta"] = json!([1, 2]);
            (
                "headers of the wrong type",
                v.to_string().into_bytes(),
                true,
            )
        }
        7 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["headers"]["timelimit"] = json!([1e20, null]);
            ("timelimit 1e20", v.to_string().into_bytes(), true)
        }
        8 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["headers"]["timelimit"] = json!([1e19, 1e19]);
            ("timelimit 1e19", v.to_string().into_bytes(), true)
        }
        9 => {
            let mut v = with_id("greenpool.echo", vec![]);
            body(&mut v, b"[[NaN, -Infinity], {}, null]");
            ("NaN arguments", v.to_string().into_bytes(), true)
        }
        10 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["headers"]["timelimit"] = json!(["__x__", null]);
            let text = v.to_string().replace("\"__x__\"", "Infinity");
            // +Infinity is "no limit" to Celery; NaN is not a number.
            let text = text.replace("Infinity", "NaN");
            ("NaN header", text.into_bytes(), true)
        }
        11 => {
            let mut v = with_id("greenpool.echo", vec![]);
            let utf16: Vec<u8> = "[[1], {}, null]"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect();
            body(&mut v, &utf16);
            ("UTF-16 labelled utf-8", v.to_string().into_bytes(), true)
        }
        12 => {
            let mut v = with_id("greenpool.echo", vec![json!(1)]);
            v["content-encoding"] = json!("x-ebcdic");
            ("unknown content-encoding", v.to_string().into_bytes(), true)
        }
        13 => {
            // Oversize names: 64 KiB, and 1 MiB for a few.
            let size = if k < 20 * 5 { 1 << 20 } else { 64 << 10 };
            let name = format!("{marker}{}", "n".repeat(size));
            let mut v = with_id(&name, vec![]);
            v["headers"]["id"] = json!(marker);
            ("oversize task name", v.to_string().into_bytes(), true)
        }
        14 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["content-type"] = json!("application/x-python-serialize");
            ("pickle content type", v.to_string().into_bytes(), true)
        }
        15 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["properties"]["delivery_tag"] = json!(null);
            ("no delivery tag", v.to_string().into_bytes(), true)
        }
        16 => {
            // Protocol v1: everything in the body dict.
            let mut v = with_id("greenpool.add", vec![]);
            v["headers"] = json!({});
            let b = format!(
                "{{\"task\": \"greenpool.add\", \"id\": \"{marker}\", \"args\": [NaN, 1], \"kwargs\": {{}}}}"
            );
            body(&mut v, b.as_bytes());
            ("v1 body with NaN", v.to_string().into_bytes(), true)
        }
        17 => {
            let mut v = with_id("greenpool.echo", vec![]);
            let link = json!({"task": "greenpool.echo", "args": [], "kwargs": {},
                "options": {"countdown": 1e19}, "subtask_type": null, "immutable": false});
            body(
                &mut v,
                &serde_json::to_vec(&json!([[1], {}, {"callbacks": [link]}])).unwrap(),
            );
            ("link countdown 1e19", v.to_string().into_bytes(), true)
        }
        18 => {
            let mut v = with_id("greenpool.add", vec![json!(1), json!(2)]);
            v["properties"]["body_encoding"] = json!("gzip");
            ("unknown body_encoding", v.to_string().into_bytes(), true)
        }
        _ => {
            // Bytes that are not UTF-8 inside the envelope (read as bytes
            // by the fetch, refused as one bad message).
            let (_, v) = stock("greenpool.add", vec![json!(1), json!(2)], marker);
            let text = v.to_string().replacen("\"body\":\"", "\"body\":\"\u{1}", 1);
            let bytes: Vec<u8> = text
                .into_bytes()
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect();
            ("not UTF-8", bytes, false)
        }
    }
}

/// One valid message (number `i`): its id and the result it must give.
fn valid(i: usize) -> (String, Vec<u8>, Value) {
    let n = i as i64;
    match i % 10 {
        0..=2 => {
            // Odd priorities, run as kombu maps them.
            let (id, mut v) = stock("greenpool.add", vec![json!(n), json!(n)], "");
            v["properties"]["priority"] = [json!(300), json!(-7), json!(4.5)][i % 3].clone();
            (id, v.to_string().into_bytes(), json!(2 * n))
        }
        3 => {
            let (id, mut v) = stock("greenpool.add", vec![], "");
            let utf16: Vec<u8> = format!("[[{n}, 1], {{}}, null]")
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect();
            v["content-encoding"] = json!("utf-16");
            v["body"] = json!(b64(&utf16));
            (id, v.to_string().into_bytes(), json!(n + 1))
        }
        4 => {
            // greenpool.add(2**200, i) is exact.
            let (id, mut v) = stock("greenpool.add", vec![], "");
            v["body"] = json!(b64(format!("[[{BIG}, {n}], {{}}, null]").as_bytes()));
            let want: Value = serde_json::from_str(&add_decimal(BIG, i)).unwrap();
            (id, v.to_string().into_bytes(), want)
        }
        _ => {
            let (id, v) = stock("greenpool.add", vec![json!(n), json!(n)], "");
            (id, v.to_string().into_bytes(), json!(2 * n))
        }
    }
}

/// `big + small` on decimal text (small < 10).
fn add_decimal(big: &str, small: usize) -> String {
    let mut digits: Vec<u8> = big.bytes().rev().map(|b| b - b'0').collect();
    let mut carry = small as u8;
    for d in &mut digits {
        let s = *d + carry;
        *d = s % 10;
        carry = s / 10;
    }
    if carry > 0 {
        digits.push(carry);
    }
    digits.iter().rev().map(|d| char::from(b'0' + d)).collect()
}

/// Counts an error line naming a bad message's marker (`bad01234x`);
/// a line naming two different markers fails the test.
fn count_marker(line: &str, seen: &mut HashMap<String, usize>) {
    if !line.contains(": ERROR/") {
        return;
    }
    let mut found: Vec<&str> = line
        .match_indices("bad")
        .filter_map(|(at, _)| line.get(at..at + 9))
        .filter(|m| m.ends_with('x') && m[3..8].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    found.dedup();
    assert!(found.len() <= 1, "one line names several messages: {line}");
    if let Some(m) = found.first() {
        *seen.entry((*m).to_owned()).or_default() += 1;
    }
}

fn start_worker(server: &RedisServer) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_greenpool"));
    cmd.args(["worker", "--broker", &server.url(0), "-c", "50"])
        .args(["-n", "storm@%h", "--loglevel", "info"])
        .env_remove("RUST_LOG");
    Proc::spawn("worker", cmd)
}

#[test]
fn storm_of_malformed_messages() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    let worker = start_worker(&server);
    let deadline = Instant::now() + Duration::from_secs(120);
    let next_line = |w: &Proc| w.next_line_before(deadline);
    let mut log = Vec::new();
    loop {
        let line = next_line(&worker);
        let ready = line.contains(" ready.");
        log.push(line);
        if ready {
            break;
        }
    }

    // Build both sets, then push them interleaved: one valid message
    // after every 20 bad ones.
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    let mut bad_markers = Vec::new();
    let mut failures_expected = Vec::new();
    let mut pushes: Vec<Vec<u8>> = Vec::with_capacity(BAD + VALID);
    let mut valid_ids = Vec::new();
    for k in 0..BAD {
        let marker = format!("bad{k:05}x");
        let (kind, text, stores) = bad(k, &marker);
        *kinds.entry(kind).or_default() += 1;
        if stores {
            failures_expected.push(marker.clone());
        }
        bad_markers.push(marker);
        pushes.push(text);
        if k % (BAD / VALID) == BAD / VALID - 1 {
            let (id, text, want) = valid(valid_ids.len());
            valid_ids.push((id, want));
            pushes.push(text);
        }
    }
    assert_eq!(valid_ids.len(), VALID);
    let mut pipe = redis::pipe();
    for text in &pushes {
        pipe.cmd("LPUSH")
            .arg("celery")
            .arg(text.as_slice())
            .ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();
    drop(pushes);

    // The worker's own log is the handshake: wait until every valid task
    // succeeded and every bad marker was logged.
    let mut succeeded = 0;
    let mut seen: HashMap<String, usize> = HashMap::new();
    while succeeded < VALID || seen.len() < BAD {
        let line = next_line(&worker);
        if line.contains("] succeeded in ") {
            succeeded += 1;
        }
        count_marker(&line, &mut seen);
        log.push(line);
    }

    // Stop it (warm): anything still unacked would be put back on the
    // queue, so an empty queue afterwards means every message was acked.
    // The process has exited once this returns: its log ends with the
    // pipes.
    for line in worker.stop_and_log() {
        if line.contains("] succeeded in ") {
            succeeded += 1;
        }
        count_marker(&line, &mut seen);
        log.push(line);
    }
    assert_eq!(succeeded, VALID, "only the valid messages succeed");

    let queued: usize = conn.llen("celery").unwrap();
    let unacked: usize = conn.hlen("unacked").unwrap();
    let index: usize = conn.zcard("unacked_index").unwrap();
    assert_eq!(
        (queued, unacked, index),
        (0, 0, 0),
        "queue and unacked empty"
    );

    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
    let missing: Vec<_> = bad_markers
        .iter()
        .filter(|m| !seen.contains_key(*m))
        .collect();
    assert!(missing.is_empty(), "never logged: {missing:?}");

    let meta = |conn: &mut redis::Connection, id: &str| -> Value {
        let raw: Option<String> = conn.get(format!("celery-task-meta-{id}")).unwrap();
        serde_json::from_str(&raw.unwrap_or_else(|| panic!("no result for {id}"))).unwrap()
    };
    for (id, want) in &valid_ids {
        let m = meta(&mut conn, id);
        assert_eq!(m["status"], "SUCCESS", "{id}: {m}");
        assert_eq!(m["result"].to_string(), want.to_string(), "{id}");
    }
    for marker in &failures_expected {
        let m = meta(&mut conn, marker);
        assert_eq!(m["status"], "FAILURE", "{marker}: {m}");
    }

    let longest = log.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 4096, "a log line of {longest} bytes");
    assert!(
        !log.iter().any(|l| l.contains('\x1b')),
        "colour codes in a log that is not a terminal"
    );

    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    println!("storm: {BAD} malformed + {VALID} valid messages");
    for (kind, n) in &kinds {
        println!("  {n:>4} {kind}");
    }
    println!(
        "storm: {succeeded}/{VALID} valid done, {}/{BAD} bad logged once, {} FAILURE results stored, \
         queue {queued}, unacked {unacked}, longest log line {longest} bytes",
        seen.len(),
        failures_expected.len()
    );
}

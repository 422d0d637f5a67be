//! Fault tests: the worker against a real redis-server that restarts, a
//! proxy that cuts and stalls its connections, hostile bytes in a queue,
//! and a server out of memory. Each prints its counts.

#![cfg(feature = "redis")] // the worker on Redis
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenpool_celery::{TaskMessage, WorkerConfig};
use redis::Commands;
use serde_json::{json, Map};
use support::faulty::{messages, push_all, start, succeeded, twice, until, Runs, DEADLINE};
use support::proxy::Proxy;
use support::RedisServer;

/// Redis stopped and started again (AOF on) while the worker drains
/// 2,000 tasks: every task gets its result.
async fn redis_restart(outage: Duration, acks_late: bool) {
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let Some((server, dir)) = RedisServer::start_with_aof("faults-restart") else {
        return;
    };
    let n = 2000;
    let msgs = messages(n, "t.work", &json!([0.01]));
    let ids: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    push_all(&mut server.conn(0), &msgs);
    let runs = Runs::default();
    let config = WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(20)
        .acks_late(acks_late)
        .hostname("celery@faults")
        .reconnect_delay(Duration::from_millis(200), Duration::from_secs(2))
        .broker_connection_max_retries(None);
    let w = start(config, &runs).await;
    let mut results = server.conn(1);
    until("the first 300 results", || {
        succeeded(&mut results, &ids) >= 300
    })
    .await;
    let before = succeeded(&mut results, &ids);
    let port = server.port;
    let server = tokio::task::spawn_blocking(move || server.restart(outage))
        .await
        .unwrap();
    assert_eq!(server.port, port);
    let mut results = server.conn(1);
    until("every result", || succeeded(&mut results, &ids) == n).await;
    let mut broker = server.conn(0);
    let unacked: usize = broker.hlen("unacked").unwrap();
    let queued: usize = broker.llen("celery").unwrap();
    let report = w.stop().await;
    let done = succeeded(&mut results, &ids);
    println!(
        "redis restart, {:?} outage, {} acks: {n} sent, {before} done before the restart, \
         {done} results, {} lost, {} run twice, {} received; left: {queued} queued, {unacked} unacked",
        outage,
        if acks_late { "late" } else { "early" },
        n - done,
        twice(&runs),
        report.received,
    );
    assert_eq!(done, n);
    assert_eq!((queued, unacked), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_1s_early_acks() {
    redis_restart(Duration::from_secs(1), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_1s_late_acks() {
    redis_restart(Duration::from_secs(1), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_10s_early_acks() {
    redis_restart(Duration::from_secs(10), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_10s_late_acks() {
    redis_restart(Duration::from_secs(10), true).await;
}

/// Connections cut twice and stalled for longer than the command timeout
/// by a proxy, under load: the worker recovers by itself and every task
/// gets its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_stalled_connections_recover() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(server.port);
    let n = 2000;
    let msgs = messages(n, "t.work", &json!([0.01]));
    let ids: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    push_all(&mut server.conn(0), &msgs);
    let runs = Runs::default();
    let config = WorkerConfig::new(proxy.url(0))
        .result_backend(Some(proxy.url(1)))
        .concurrency(20)
        .acks_late(true)
        .hostname("celery@faults")
        .command_timeout(Duration::from_secs(1))
        .broker_connection_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::from_millis(100), Duration::from_secs(1))
        .broker_connection_max_retries(None)
        // A fetch whose reply is lost leaves its messages in `unacked`
        // until the sweep: keep that short here.
        .visibility_timeout(Duration::from_secs(3))
        .restore_interval(Duration::from_secs(1));
    let w = start(config, &runs).await;
    let mut results = server.conn(1);
    until("200 results", || succeeded(&mut results, &ids) >= 200).await;
    let cut1 = proxy.cut();
    until("600 results", || succeeded(&mut results, &ids) >= 600).await;
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(3)).await; // the stall itself
    proxy.resume();
    until("1200 results", || succeeded(&mut results, &ids) >= 1200).await;
    let cut2 = proxy.cut();
    until("every result", || succeeded(&mut results, &ids) == n).await;
    let mut broker = server.conn(0);
    until("an empty unacked hash", || {
        broker.hlen::<_, usize>("unacked").unwrap() == 0
    })
    .await;
    let queued: usize = broker.llen("celery").unwrap();
    let report = w.stop().await;
    let done = succeeded(&mut results, &ids);
    println!(
        "proxy cut ({cut1} then {cut2} connections) and 3 s stall: {n} sent, {done} results, \
         {} lost, {} run twice, {} received, {} connections made; left: {queued} queued",
        n - done,
        twice(&runs),
        report.received,
        proxy.accepted()
    );
    assert_eq!(done, n);
    assert_eq!(queued, 0);
}

/// Log lines written during a test, for counting.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Bad bytes among 400 valid messages: one message that is not UTF-8
/// (with a delivery tag), one that is not JSON and one without a tag.
/// Every valid one is done, each bad one is logged once, and the queue
/// and `unacked` end empty.
#[tokio::test(flavor = "current_thread")]
async fn bad_bytes_are_one_bad_message_each() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let n = 400;
    let mut msgs = messages(n, "t.work", &json!([0.0]));
    let ids: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    let mut conn = server.conn(0);
    // The bad ones go in the middle of the queue, inside one fetch.
    let rest = msgs.split_off(n / 2);
    push_all(&mut conn, &msgs);
    let not_utf8: &[u8] =
        b"{\"body\": \"W1tdLCB7fSwge31d\", \"content-type\": \"application/json\", \
        \"headers\": {\"task\": \"t.work\", \"id\": \"bad-\xff\xfe\"}, \
        \"properties\": {\"delivery_tag\": \"tag-not-utf8\", \"body_encoding\": \"base64\", \
        \"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}}}";
    let _: () = conn.lpush("celery", not_utf8).unwrap();
    let _: () = conn
        .lpush("celery", "this is not json MARK-NOT-JSON")
        .unwrap();
    let _: () = conn
        .lpush(
            "celery",
            r#"{"body": "", "properties": {}, "note": "MARK-NO-TAG"}"#,
        )
        .unwrap();
    push_all(&mut conn, &rest);
    let runs = Runs::default();
    let config = WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(50)
        .hostname("celery@faults");
    let w = start(config, &runs).await;
    let mut results = server.conn(1);
    until("every valid result", || succeeded(&mut results, &ids) == n).await;
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    })
    .await;
    let queued: usize = conn.llen("celery").unwrap();
    let report = w.stop().await;
    let done = succeeded(&mut results, &ids);
    let utf8_lines = captured.lines_with("not UTF-8");
    let json_lines = captured.lines_with("MARK-NOT-JSON");
    let tag_lines = captured.lines_with("MARK-NO-TAG");
    println!(
        "bad bytes: {n} valid + 3 bad sent, {done} valid done, {} received; log lines: \
         not UTF-8 {utf8_lines}, not JSON {json_lines}, no tag {tag_lines}; left: {queued} queued",
        report.received
    );
    assert_eq!(done, n);
    assert_eq!(report.received, n as u64 + 3);
    assert_eq!((utf8_lines, json_lines, tag_lines), (1, 1, 1));
    assert_eq!(queued, 0);
}

/// Checks that no acks_late message left its queue, the worker's
/// in-flight list and `unacked` without its result. Returns (acked, with result).
fn acked_have_results(conn: &mut redis::Connection, msgs: &[(String, String, String)]) -> usize {
    // Not MULTI (a server at maxmemory refuses that), but in an order that
    // is sound: a message absent from the queue and then from `unacked`
    // was acked before the EXISTS that follow, and its result, written
    // before its ack, must show.
    // A message goes from the queue to the worker's in-flight list, then
    // to `unacked`, then is acked: read in that order.
    let mut pipe = redis::pipe();
    pipe.cmd("LRANGE").arg("celery").arg(0).arg(-1);
    pipe.cmd("LRANGE")
        .arg("greenpool.inflight.celery@faults\x06\x16celery")
        .arg(0)
        .arg(-1);
    pipe.cmd("HKEYS").arg("unacked");
    for (id, _, _) in msgs {
        pipe.cmd("EXISTS").arg(format!("celery-task-meta-{id}"));
    }
    let mut reply: Vec<redis::Value> = pipe.query(conn).unwrap();
    let exists: Vec<bool> = reply
        .split_off(3)
        .into_iter()
        .map(|v| redis::from_redis_value::<bool>(v).unwrap())
        .collect();
    let unacked: HashSet<String> = redis::from_redis_value::<Vec<String>>(reply.pop().unwrap())
        .unwrap()
        .into_iter()
        .collect();
    let in_flight: Vec<String> = redis::from_redis_value(reply.pop().unwrap()).unwrap();
    let mut queue: Vec<String> = redis::from_redis_value(reply.pop().unwrap()).unwrap();
    queue.extend(in_flight);
    let mut acked = 0;
    for ((id, tag, _), has_result) in msgs.iter().zip(exists) {
        let queued = queue.iter().any(|m| m.contains(tag.as_str()));
        if !queued && !unacked.contains(tag) {
            acked += 1;
            assert!(has_result, "task {id} was acked without its result");
        }
    }
    acked
}

/// Redis at `maxmemory` with `noeviction` refuses the results of acks_late
/// tasks: none of them is acked without its result, and once memory is
/// freed every result arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxmemory_noeviction_never_acks_without_the_result() {
    let Some(server) =
        RedisServer::start_with(&["--appendonly", "no", "--maxmemory-policy", "noeviction"])
    else {
        return;
    };
    let n = 100;
    let msgs = messages(n, "t.big", &json!([20_000]));
    let ids: Vec<String> = msgs.iter().map(|m| m.0.clone()).collect();
    let mut conn = server.conn(0);
    push_all(&mut conn, &msgs);
    // Room for about ten results.
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 300_000)
        .query(&mut conn)
        .unwrap();
    let runs = Runs::default();
    let config = WorkerConfig::new(server.url(0))
        .concurrency(10)
        .acks_late(true)
        .hostname("celery@faults")
        .reconnect_delay(Duration::from_millis(50), Duration::from_millis(200));
    let w = start(config, &runs).await;
    // While the server refuses writes: every fetched message is either
    // unacked or acked with its result.
    let mut checks = 0;
    // The queue drains, or (the bookkeeping of a fetch is refused too)
    // what is left of it stays queued: wait for either, then for the
    // refusal.
    let mut refused = 0;
    let refusals = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_error_replies:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    until("the queue to be drained or the worker refused", || {
        checks += 1;
        acked_have_results(&mut conn, &msgs);
        conn.llen::<_, usize>("celery").unwrap() == 0 || refusals(&mut conn) > 0
    })
    .await;
    until("the worker to be refused", || {
        checks += 1;
        acked_have_results(&mut conn, &msgs);
        refused = refusals(&mut conn);
        refused > 0
    })
    .await;
    let acked_during = acked_have_results(&mut conn, &msgs);
    let mut results = server.conn(0);
    let stored_during = succeeded(&mut results, &ids);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut conn)
        .unwrap();
    until("every result", || succeeded(&mut results, &ids) == n).await;
    until("an empty unacked hash", || {
        conn.hlen::<_, usize>("unacked").unwrap() == 0
    })
    .await;
    let report = w.stop().await;
    let done = succeeded(&mut results, &ids);
    println!(
        "maxmemory + noeviction: {n} acks_late tasks, while refused: {acked_during} acked, \
         {stored_during} results stored, {refused} error replies, {checks} atomic checks, \
         0 acked without result; after memory freed: {done} results, {} lost, {} received",
        n - done,
        report.received
    );
    assert_eq!(done, n);
}

/// A message over `max_message_size` among valid ones: removed inside
/// Redis unread, logged with its size, FAILURE stored; the rest are done.
#[tokio::test(flavor = "current_thread")]
async fn oversized_message_is_refused_unread() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let captured = Captured::default();
    let sink = captured.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    );
    let small = messages(50, "t.work", &json!([0.0]));
    let big = messages(1, "t.big", &json!(["y".repeat(3 << 20)]));
    let mut conn = server.conn(0);
    push_all(&mut conn, &small[..25]);
    push_all(&mut conn, &big);
    push_all(&mut conn, &small[25..]);
    let runs = Runs::default();
    let config = WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(10)
        .hostname("celery@faults")
        .max_message_size(1 << 20);
    let w = start(config, &runs).await;
    let ids: Vec<String> = small.iter().map(|m| m.0.clone()).collect();
    let mut results = server.conn(1);
    until("every small result", || succeeded(&mut results, &ids) == 50).await;
    let big_key = format!("celery-task-meta-{}", big[0].0);
    until("the big one's failure", || {
        results.exists::<_, bool>(&big_key).unwrap()
    })
    .await;
    let meta: String = results.get(&big_key).unwrap();
    let report = w.stop().await;
    let size = big[0].2.len();
    let lines = captured.lines_with(&format!("of {size} bytes"));
    let queued: usize = conn.llen("celery").unwrap();
    let unacked: usize = conn.hlen("unacked").unwrap();
    println!(
        "oversized: 50 small + 1 of {size} bytes (limit 1 MiB): {} small done, big one logged \
         {lines} time(s), stored {}, {} failed; left: {queued} queued, {unacked} unacked",
        succeeded(&mut results, &ids),
        if meta.contains("FAILURE") {
            "FAILURE"
        } else {
            "?"
        },
        report.failed
    );
    assert!(
        meta.contains("FAILURE") && meta.contains("MessageTooLarge"),
        "{meta}"
    );
    assert_eq!(lines, 1);
    assert_eq!((queued, unacked), (0, 0));
}

/// A message restored at shutdown goes back to the queue it was fetched
/// from, whatever routing key its envelope names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_returns_to_the_queue_it_came_from() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut conn = server.conn(0);
    // One long task holds the only slot; the next waits, prefetched.
    let mut long = messages(1, "t.work", &json!([30.0]));
    let mut waiting = TaskMessage::new("t.work", vec![json!(0.0)], Map::new());
    waiting.properties.delivery_info.routing_key = String::new();
    let waiting_id = waiting.headers.id.clone();
    long.push((waiting_id.clone(), String::new(), waiting.encode().unwrap()));
    push_all(&mut conn, &long);
    let runs = Runs::default();
    let config = WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(1)
        .hostname("celery@faults");
    let w = start(config, &runs).await;
    until("both fetched", || {
        conn.llen::<_, usize>("celery").unwrap() == 0
            && conn.hlen::<_, usize>("unacked").unwrap() == 1
    })
    .await;
    let stop = w.stop.clone();
    stop.cold();
    let _ = w.task.await.unwrap();
    let back: Vec<String> = conn.lrange("celery", 0, -1).unwrap();
    let to_empty: usize = conn.llen("").unwrap();
    println!(
        "restore: {} message(s) back on the queue they came from, {to_empty} on the key \"\"",
        back.len()
    );
    assert!(back.iter().any(|m| m.contains(&waiting_id)), "{back:?}");
    assert_eq!(to_empty, 0);
}

/// A client whose broker and backend connections go through a new proxy,
/// and the result of one `t.work` task it sent (the client is returned so
/// its connections stay open).
async fn send_through_proxy(
    server: &RedisServer,
) -> (
    Proxy,
    greenpool_celery::Client,
    greenpool_celery::AsyncResult,
) {
    let proxy = Proxy::start(server.port);
    let client = greenpool_celery::Client::connect(&proxy.url(0), Some(&proxy.url(1)))
        .await
        .unwrap();
    let sent = client
        .send_task(
            "t.work",
            vec![json!(0.0)],
            Map::new(),
            greenpool_celery::SendOptions::default(),
        )
        .await
        .unwrap();
    (proxy, client, sent)
}

/// A worker connected straight to `server`, results in db 1.
fn result_worker(server: &RedisServer) -> WorkerConfig {
    WorkerConfig::new(server.url(0))
        .result_backend(Some(server.url(1)))
        .concurrency(2)
        .hostname("celery@faults")
}

/// A result wait whose pub/sub connection is cut subscribes again, reads
/// the key once more, and still gets the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_wait_survives_a_cut_subscription() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (proxy, _client, sent) = send_through_proxy(&server).await;
    let waiting = tokio::spawn(async move { sent.get(DEADLINE).await });
    // Two connections for the client, one for the subscription.
    until("the subscription", || proxy.accepted() >= 3).await;
    let cut = proxy.cut();
    let runs = Runs::default();
    let w = start(result_worker(&server), &runs).await;
    let got = waiting.await.unwrap();
    w.stop().await;
    println!(
        "result wait: {cut} connections cut while waiting, {} made in all, got {got:?}",
        proxy.accepted()
    );
    assert_eq!(got.unwrap(), json!(0.0));
}

/// A result wait whose first subscription is refused (the connection
/// closed as soon as it is made) subscribes again under the client's
/// retry policy instead of failing, and gets the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_wait_survives_a_refused_first_subscription() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (proxy, _client, sent) = send_through_proxy(&server).await;
    let before = proxy.accepted();
    proxy.refuse_next(1);
    let runs = Runs::default();
    let w = start(result_worker(&server), &runs).await;
    let got = sent.get(DEADLINE).await;
    w.stop().await;
    println!(
        "result wait: first subscription refused, {} connection(s) forwarded for it, got {got:?}",
        proxy.accepted() - before
    );
    assert_eq!(got.unwrap(), json!(0.0));
}

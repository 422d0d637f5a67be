//! Follow-ups on AMQP when clients route through an exchange of their own:
//! a queue bound to a direct exchange under a routing key that is not its
//! name, tasks published there as a stock client would (lapin here, with
//! Celery's protocol 2 headers and rpc:// replies to a queue of the
//! test's own), each test on its own RabbitMQ node.

#![cfg(feature = "amqp")] // the worker on AMQP
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on setup failure

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use greenpool_celery::{TaskContext, TaskError, TaskRegistry, Worker, WorkerConfig};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde_json::{json, Value};
use support::rabbit::RabbitNode;
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

/// The test's own connection: a channel, and an exclusive reply queue
/// consumed for rpc:// results.
struct Client {
    _conn: Connection,
    ch: Channel,
    reply_to: String,
    replies: Consumer,
    /// Every state received, by task id, in order.
    states: HashMap<String, Vec<Value>>,
}

impl Client {
    async fn connect(node: &RabbitNode) -> Self {
        let conn = Connection::connect(&node.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let reply_to = q.name().as_str().to_owned();
        let replies = ch
            .basic_consume(
                reply_to.as_str().into(),
                "replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Client {
            _conn: conn,
            ch,
            reply_to,
            replies,
            states: HashMap::new(),
        }
    }

    /// A direct exchange `exchange` and queue `queue` bound to it under
    /// `key`, declared as the worker declares its queues (durable).
    async fn bind(&self, exchange: &str, queue: &str, key: &str) {
        self.ch
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn unbind(&self, exchange: &str, queue: &str, key: &str) {
        self.ch
            .queue_unbind(
                queue.into(),
                exchange.into(),
                key.into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes task `task(args)` to `exchange` under `key` as Celery's
    /// client does (protocol 2, JSON, persistent, confirmed by the
    /// broker), replies to the reply queue; returns the task id.
    async fn send(&self, exchange: &str, key: &str, task: &str, args: Value) -> String {
        let id = greenpool_celery::uuid4();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v));
        let mut h = FieldTable::default();
        h.insert("lang".into(), s("py"));
        h.insert("task".into(), s(task));
        h.insert("id".into(), s(&id));
        h.insert("root_id".into(), s(&id));
        h.insert("parent_id".into(), AMQPValue::Void);
        h.insert("group".into(), AMQPValue::Void);
        h.insert("retries".into(), AMQPValue::LongLongInt(0));
        h.insert("eta".into(), AMQPValue::Void);
        h.insert("expires".into(), AMQPValue::Void);
        h.insert(
            "timelimit".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void, AMQPValue::Void])),
        );
        h.insert("argsrepr".into(), s(&args.to_string()));
        h.insert("kwargsrepr".into(), s("{}"));
        h.insert("origin".into(), s("test@amqp_follow_ups"));
        let body = json!([
            args,
            {},
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ]);
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("utf-8"))
            .with_correlation_id(ShortString::from(id.as_str()))
            .with_reply_to(ShortString::from(self.reply_to.as_str()))
            .with_delivery_mode(2)
            .with_priority(0)
            .with_headers(h);
        // The test's channel has no confirms: the publish is sent once
        // this returns, and the broker routes it in order.
        self.ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body).unwrap(),
                props,
            )
            .await
            .unwrap();
        id
    }

    /// Waits for task `id` to reach `state`; returns its meta, or panics
    /// after [`WAIT`] with the states seen.
    async fn wait_for(&mut self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.states.get(id).into_iter().flatten();
            if let Some(meta) = seen.clone().find(|m| m["status"] == state) {
                return meta.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.replies.next()).await;
            let Ok(Some(Ok(d))) = next else {
                panic!(
                    "task {id} did not reach {state} within {WAIT:?}; states seen: {:?}",
                    seen.map(|m| m["status"].clone()).collect::<Vec<_>>()
                );
            };
            let meta: Value = serde_json::from_slice(&d.data).unwrap();
            let task = meta["task_id"].as_str().unwrap_or_default().to_owned();
            self.states.entry(task).or_default().push(meta);
        }
    }
}

/// Starts `registry` consuming `queue`, with rpc:// results; returns the
/// shutdown handle and the running worker once it is ready.
async fn start_worker(
    node: &RabbitNode,
    queue: &str,
    registry: TaskRegistry,
) -> (
    greenpool_celery::ShutdownHandle,
    tokio::task::JoinHandle<Result<greenpool_celery::WorkerReport, greenpool_celery::WorkerError>>,
) {
    let config = WorkerConfig::new(node.url())
        .result_backend(Some("rpc://".to_owned()))
        .queues([queue])
        .concurrency(2)
        .hostname(format!("{queue}@test"));
    let worker = Worker::new(config, registry).unwrap();
    let (stop, running) = support::run_until_ready(worker).await;
    (stop, running)
}

/// The built-in tasks of the issue, as `greenpool-cli` registers them.
fn builtins() -> TaskRegistry {
    let mut t = TaskRegistry::new();
    t.register(
        "greenpool.add",
        &["x", "y"],
        |_: TaskContext, (x, y): (i64, i64)| async move { Ok::<_, TaskError>(x + y) },
    );
    t.register(
        "greenpool.retry",
        &["times"],
        |ctx: TaskContext, (times,): (u32,)| async move {
            if ctx.retries() < times {
                Err(TaskError::retry(Duration::ZERO))
            } else {
                Ok(ctx.retries())
            }
        },
    )
    .max_retries = None;
    t.register("t.queue", &[], |ctx: TaskContext, (): ()| async move {
        Ok::<_, TaskError>(ctx.queue().to_owned())
    });
    t
}

/// Queue `q2` bound to direct exchange `ex2` under `rk2`: a task sent
/// there returns its result, and so does a task that retries twice (each
/// retry goes where its message came from, as Celery's `Task.retry`
/// sends it, not to the default exchange under `rk2`, which routes
/// nowhere). The task sees the queue it was consumed from, `q2`, not the
/// routing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_a_bound_exchange_returns_its_result() {
    let Some(node) = RabbitNode::start() else {
        return;
    };
    let mut client = Client::connect(&node).await;
    client.bind("ex2", "q2", "rk2").await;
    let (stop, running) = start_worker(&node, "q2", builtins()).await;

    let add = client
        .send("ex2", "rk2", "greenpool.add", json!([2, 3]))
        .await;
    let retry = client
        .send("ex2", "rk2", "greenpool.retry", json!([2]))
        .await;
    assert_eq!(client.wait_for(&add, "SUCCESS").await["result"], json!(5));
    assert_eq!(client.wait_for(&retry, "SUCCESS").await["result"], json!(2));
    let retries = client.states[&retry]
        .iter()
        .filter(|m| m["status"] == "RETRY")
        .count();
    assert_eq!(retries, 2, "two RETRY states before SUCCESS");
    let queue = client.send("ex2", "rk2", "t.queue", json!([])).await;
    assert_eq!(
        client.wait_for(&queue, "SUCCESS").await["result"],
        json!("q2"),
        "the request's queue is the one it was consumed from"
    );

    stop.warm();
    running.await.unwrap().unwrap();
}

/// Log lines of the whole test binary (the worker logs from the
/// runtime's threads, so a thread-local subscriber would miss them).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let sink = log.clone();
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::WARN)
                .with_writer(move || sink.clone())
                .finish(),
        )
        .unwrap();
        log
    })
}

/// Messages ready and unacked in `queue`, polled until they are `want`
/// (rabbitmqctl blocks: off the runtime's threads).
fn wait_for_counts(node: &RabbitNode, queue: &str, want: (u64, u64)) {
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        while Instant::now() < deadline {
            last = node.queue_counts(queue);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200)); // polling rabbitmqctl
        }
        panic!("queue {queue}: (ready, unacked) = {last:?}, expected {want:?}");
    });
}

/// A late-ack task whose retry the broker cannot route (its queue was
/// unbound from the exchange while the task ran): the worker logs the
/// exchange and routing key and does not ack the message, which goes back
/// to its queue when the worker's connection ends; with the binding back,
/// the next worker runs it to its result. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_retry_leaves_its_message_unacked() {
    let log = captured();
    let Some(node) = RabbitNode::start() else {
        return;
    };
    let mut client = Client::connect(&node).await;
    client.bind("ex3", "q3", "rk3").await;
    // The first run waits (started, then held) so that the binding can be
    // removed before it asks for its retry.
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let armed = Arc::new(AtomicBool::new(true));
    let registry = {
        let (started, release, armed) = (started.clone(), release.clone(), armed.clone());
        let mut t = TaskRegistry::new();
        t.register("t.retry_once", &[], move |ctx: TaskContext, (): ()| {
            let (started, release, armed) = (started.clone(), release.clone(), armed.clone());
            async move {
                if armed.swap(false, Ordering::SeqCst) {
                    started.notify_one();
                    release.notified().await;
                }
                if ctx.retries() == 0 {
                    return Err(TaskError::retry(Duration::ZERO));
                }
                Ok(ctx.retries())
            }
        })
        .acks_late = Some(true);
        t
    };
    let (stop, running) = start_worker(&node, "q3", registry.clone()).await;
    let id = client.send("ex3", "rk3", "t.retry_once", json!([])).await;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the task starts");
    client.unbind("ex3", "q3", "rk3").await;
    release.notify_one();
    client.wait_for(&id, "RETRY").await;
    // Warm shutdown flushes the outbox (the ack comes after the retry's
    // confirm) and closes the connection.
    stop.warm();
    running.await.unwrap().unwrap();
    wait_for_counts(&node, "q3", (1, 0));
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("\"ex3\"") && l.contains("\"rk3\"")),
        "an error names the exchange and routing key; log:\n{logged}"
    );

    client.bind("ex3", "q3", "rk3").await;
    let (stop, running) = start_worker(&node, "q3", registry).await;
    assert_eq!(client.wait_for(&id, "SUCCESS").await["result"], json!(1));
    stop.warm();
    running.await.unwrap().unwrap();
    wait_for_counts(&node, "q3", (0, 0));
}

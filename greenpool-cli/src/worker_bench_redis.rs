//! The Redis side of `greenpool bench worker` (see `worker_bench`): a
//! private redis-server (or `--redis URL`), messages pre-enqueued with
//! LPUSH, results counted with DBSIZE and the server's command counts read
//! from `INFO commandstats`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use greenpool_celery::{TaskMessage, Worker, WorkerConfig};
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Map};

use crate::worker_bench::{
    baseline_python, print_table, print_verdict, start_python_worker, stop_python_worker, Columns,
    Run, WorkerBenchArgs,
};

/// A redis-server owned by the bench, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> anyhow::Result<(Server, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server; install it (apt-get install redis-server) or pass --redis URL")?;
    let stdout = child.stdout.take().context("redis-server has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("Ready to accept connections") => break,
            Some(Ok(_)) => {}
            _ => bail!("redis-server exited before it was ready"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((Server(child), format!("redis://127.0.0.1:{port}")))
}

/// How long the bench waits for a reply. The redis crate's default (0.5 s)
/// is shorter than one worker script of 1,024 messages can hold a loaded
/// server, during which the bench's polls simply queue up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Database `db` of the server `base` names (`redis://host:port`, or
/// `rediss://host:port?ssl_...` with its query kept after the path).
fn db_url(base: &str, db: u8) -> String {
    match base.split_once('?') {
        Some((server, query)) => format!("{}/{db}?{query}", server.trim_end_matches('/')),
        None => format!("{}/{db}", base.trim_end_matches('/')),
    }
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    // The worker's own way to read a URL: rediss:// with Celery's ssl_* keys, ACL users.
    let client = greenpool_celery::redis_client(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Flushes both databases and pushes `n` `greenpool.add` messages.
async fn enqueue(conn: &mut MultiplexedConnection, n: usize) -> anyhow::Result<()> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("  enqueue {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The bench's workers run with kombu's default key names.
    let list = greenpool_celery::RedisKeys::default().queue_key("celery", 0);
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(1000);
        let mut pipe = redis::pipe();
        for i in sent..sent + chunk {
            let msg = TaskMessage::new("greenpool.add", vec![json!(i), json!(1)], Map::new());
            pipe.cmd("LPUSH").arg(&list).arg(msg.encode()?).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        sent += chunk;
        bar.set_position(sent as u64);
    }
    bar.finish_and_clear();
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Waits until `n` results exist in `db`, with a progress bar.
async fn wait_results(
    results: &mut MultiplexedConnection,
    n: usize,
    label: &str,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(&format!("  {label} {{bar:40}} {{pos}}/{{len}} {{per_sec}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let done: usize = redis::cmd("DBSIZE").query_async(results).await?;
        bar.set_position(done as u64);
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Seconds from the first to the last `date_done` stored in `db`: the
/// worker's own span, free of start-up and of the bench's polling.
async fn result_span(results: &mut MultiplexedConnection) -> anyhow::Result<Duration> {
    let mut cursor: u64 = 0;
    let mut first = f64::INFINITY;
    let mut last = f64::NEG_INFINITY;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("celery-task-meta-*")
            .arg("COUNT")
            .arg(2000)
            .query_async(results)
            .await?;
        if !keys.is_empty() {
            let metas: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(results).await?;
            for meta in metas.into_iter().flatten() {
                let v: serde_json::Value = serde_json::from_str(&meta)?;
                let done: greenpool_celery::Timestamp = v["date_done"]
                    .as_str()
                    .context("a stored result has no date_done")?
                    .parse()?;
                first = first.min(done.unix_seconds());
                last = last.max(done.unix_seconds());
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    anyhow::ensure!(first.is_finite(), "no results stored");
    Ok(Duration::from_secs_f64((last - first).max(1e-6)))
}

/// Commands run since the last reset, without the bench's own polling.
async fn commandstats(
    conn: &mut MultiplexedConnection,
) -> anyhow::Result<(u64, Vec<(String, u64)>)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let mut per: Vec<(String, u64)> = Vec::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        if matches!(
            name,
            "info" | "dbsize" | "config" | "select" | "client" | "hello" | "ping"
        ) {
            continue;
        }
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0);
        per.push((name.to_owned(), calls));
    }
    per.sort_by_key(|p| std::cmp::Reverse(p.1));
    Ok((per.iter().map(|p| p.1).sum(), per))
}

/// Enqueues what each worker drains: `--tasks` adds, or with `--canvas`
/// the chords (their bodies' ids returned).
async fn enqueue_load(
    conn: &mut MultiplexedConnection,
    results: &mut MultiplexedConnection,
    args: &WorkerBenchArgs,
) -> anyhow::Result<Vec<String>> {
    if args.canvas {
        crate::worker_bench_canvas::enqueue(conn, results, args.chords, args.chord_size).await
    } else {
        enqueue(conn, args.tasks).await?;
        Ok(Vec::new())
    }
}

/// Waits until the load is drained: every result stored, or every
/// chord's body.
async fn wait_load(
    results: &mut MultiplexedConnection,
    args: &WorkerBenchArgs,
    bodies: &[String],
    label: &str,
) -> anyhow::Result<()> {
    if args.canvas {
        crate::worker_bench_canvas::wait(results, bodies, args.chord_size, label).await
    } else {
        wait_results(results, args.tasks, label).await
    }
}

/// What the rate counts: tasks, or chords.
fn units(args: &WorkerBenchArgs) -> usize {
    if args.canvas {
        args.chords
    } else {
        args.tasks
    }
}

async fn bench_greenpool(
    url: &str,
    results_url: &str,
    args: &WorkerBenchArgs,
) -> anyhow::Result<Run> {
    let mut conn = connect(&db_url(url, 0)).await?;
    let mut results = connect(results_url).await?;
    let bodies = enqueue_load(&mut conn, &mut results, args).await?;
    let config = WorkerConfig::new(db_url(url, 0))
        .result_backend(Some(results_url.to_owned()))
        .concurrency(args.concurrency)
        .sync_replicas(args.sync_replicas, Duration::from_secs(1))
        .hostname("bench@greenpool");
    let worker = Worker::new(config, crate::builtin_tasks::registry())?;
    let stop = worker.shutdown_handle();
    let stats = worker.stats();
    let ready = worker.ready();
    let notified = ready.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let task = tokio::spawn(worker.run());
    notified.await;
    let trips_before = stats.round_trips();
    wait_load(&mut results, args, &bodies, "greenpool      ").await?;
    let round_trips = stats.round_trips() - trips_before;
    stop.warm();
    task.await??;
    let (commands, top) = commandstats(&mut conn).await?;
    let elapsed = result_span(&mut results).await?;
    Ok(Run {
        name: "greenpool worker",
        tasks: units(args),
        elapsed,
        commands,
        round_trips: Some(round_trips),
        top,
    })
}

async fn bench_python(
    python: &Path,
    url: &str,
    results_url: &str,
    args: &WorkerBenchArgs,
) -> anyhow::Result<Run> {
    let mut conn = connect(&db_url(url, 0)).await?;
    let mut results = connect(results_url).await?;
    let bodies = enqueue_load(&mut conn, &mut results, args).await?;
    let mut child = start_python_worker(python, args.concurrency, &db_url(url, 0), results_url)?;
    let outcome = tokio::select! {
        r = wait_load(&mut results, args, &bodies, "celery eventlet") => r,
        e = exited(&mut child) => Err(e),
    };
    stop_python_worker(child);
    outcome?;
    let (commands, top) = commandstats(&mut conn).await?;
    let elapsed = result_span(&mut results).await?;
    Ok(Run {
        name: "celery -P eventlet",
        tasks: units(args),
        elapsed,
        commands,
        round_trips: None,
        top,
    })
}

/// Resolves when the Python worker exits (it should not, before the
/// load is drained): the error to stop the bench with.
async fn exited(child: &mut Child) -> anyhow::Error {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return anyhow::anyhow!(
                "the Python worker exited ({status}) before the load was drained"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs both sides on Redis and prints the table.
pub(crate) async fn run(args: &WorkerBenchArgs) -> anyhow::Result<()> {
    let (_server, url) = match &args.redis {
        Some(u) => (
            None,
            u.trim_end_matches('/').trim_end_matches("/0").to_owned(),
        ),
        None => {
            let (s, u) = start_redis()?;
            (Some(s), u)
        }
    };
    // Results in db 1, as many deployments keep them, so DBSIZE counts them.
    let results_url = db_url(&url, 1);
    if args.canvas {
        println!(
            "worker bench: {} chords of {} greenpool.add parts (body greenpool.echo) \
             pre-enqueued, -c {}, results in {results_url}",
            args.chords, args.chord_size, args.concurrency
        );
    } else {
        println!(
            "worker bench: {} greenpool.add messages pre-enqueued, -c {}, results in {results_url}",
            args.tasks, args.concurrency
        );
    }
    let mut runs = vec![bench_greenpool(&url, &results_url, args).await?];
    if let Some(py) = baseline_python(&args.python) {
        runs.push(bench_python(&py, &url, &results_url, args).await?);
    }
    let columns = if args.canvas {
        Columns {
            rate: "chords/s",
            per_task: "redis cmds/chord",
            trips: "round trips/chord",
            no_trips: "n/a",
        }
    } else {
        Columns {
            rate: "tasks/s",
            per_task: "redis cmds/t",
            trips: "round trips/t",
            no_trips: "n/a",
        }
    };
    print_table(&runs, &columns);
    for r in &runs {
        let top: Vec<String> = r
            .top
            .iter()
            .take(8)
            .map(|(n, c)| format!("{n} {:.2}", *c as f64 / r.tasks as f64))
            .collect();
        let per = if args.canvas { "chord" } else { "task" };
        println!("  {} commands per {per}: {}", r.name, top.join(", "));
    }
    print_verdict(&runs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_goes_before_the_query() {
        assert_eq!(db_url("redis://h:1", 0), "redis://h:1/0");
        assert_eq!(
            db_url("rediss://h:1?ssl_cert_reqs=none", 1),
            "rediss://h:1/1?ssl_cert_reqs=none"
        );
    }

    /// A worker script holding the server longer than the redis crate's
    /// default reply timeout (0.5 s) must not fail the bench's polls.
    #[tokio::test]
    async fn polls_outlast_a_long_script() {
        let (_server, url) = match start_redis() {
            Ok(s) => s,
            Err(e) if std::env::var_os("GREENPOOL_REQUIRE_REDIS").is_none() => {
                eprintln!("SKIPPED: no redis-server ({e:#}); set GREENPOOL_REQUIRE_REDIS=1 to fail instead");
                return;
            }
            Err(e) => panic!("GREENPOOL_REQUIRE_REDIS=1 but redis-server cannot start: {e:#}"),
        };
        let conn = connect(&url).await.unwrap();
        // Busy for 0.8 s of the server's own clock, as a large fetch on a
        // loaded machine can be.
        let busy = "local t = redis.call('TIME') \
                    local start = t[1] * 1000000 + t[2] \
                    repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= 800000 \
                    return 1";
        let (mut a, mut b) = (conn.clone(), conn);
        let mut eval = redis::cmd("EVAL");
        eval.arg(busy).arg(0);
        let dbsize = redis::cmd("DBSIZE");
        let (held, size) = tokio::join!(
            eval.query_async::<i64>(&mut a),
            dbsize.query_async::<usize>(&mut b),
        );
        assert_eq!(held.unwrap(), 1);
        assert_eq!(size.unwrap(), 0);
    }
}

//! `greenpool control`: steer workers like `celery control`; the
//! worker's operating flags (`-E`, `--autoscale`, time limits); and the
//! request and printing shared with `greenpool inspect`.

use std::time::Duration;

use anyhow::Context;
use greenpool_celery::{Control, ControlOptions, Replies, WorkerConfig};
use serde_json::{json, Map, Value};

/// Worker flags for operating it: events, autoscaling, time limits,
/// metrics.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerControlArgs {
    /// Send task events (worker events are always sent).
    #[arg(short = 'E', long = "events", alias = "task-events")]
    events: bool,
    /// Grow the pool with the backlog up to MAX and shrink it to MIN when
    /// idle: "max,min".
    #[arg(long, value_name = "MAX,MIN")]
    autoscale: Option<String>,
    /// Hard time limit in seconds for tasks that set none.
    #[arg(long, value_name = "SECS")]
    time_limit: Option<f64>,
    /// Soft time limit in seconds for tasks that set none.
    #[arg(long, value_name = "SECS")]
    soft_time_limit: Option<f64>,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g.
    /// 127.0.0.1:9808; port 0 picks a free one, logged at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

impl WorkerControlArgs {
    /// Applies the flags to `config`.
    pub(crate) fn apply(&self, config: WorkerConfig) -> anyhow::Result<WorkerConfig> {
        for (name, v) in [
            ("time-limit", self.time_limit),
            ("soft-time-limit", self.soft_time_limit),
        ] {
            if let Some(s) = v {
                anyhow::ensure!(
                    s.is_finite() && s > 0.0,
                    "--{name} must be a positive number of seconds"
                );
            }
        }
        // Flags given win over the GREENPOOL_* variables already applied.
        let mut config = config;
        config.send_task_events |= self.events;
        if let Some(s) = self.time_limit {
            config.limits.time_limit = Some(s);
        }
        if let Some(s) = self.soft_time_limit {
            config.limits.soft_time_limit = Some(s);
        }
        if let Some(addr) = self.metrics {
            config.metrics = Some(addr);
        }
        if let Some(spec) = &self.autoscale {
            let (max, min) = parse_autoscale(spec)?;
            config = config.autoscale(max, min);
        }
        Ok(config)
    }
}

/// `"10,3"` → (10, 3); `"10"` → (10, 0), as Celery reads `--autoscale`.
fn parse_autoscale(spec: &str) -> anyhow::Result<(usize, usize)> {
    let mut parts = spec.split(',').map(str::trim);
    let num = |s: Option<&str>, what: &str| -> anyhow::Result<usize> {
        match s {
            None | Some("") => Ok(0),
            Some(s) => s
                .parse()
                .with_context(|| format!("--autoscale: {what} {s:?} is not a whole number")),
        }
    };
    let max = num(parts.next(), "max")?;
    let min = num(parts.next(), "min")?;
    anyhow::ensure!(
        max >= 1,
        "--autoscale: max must be at least 1 (write max,min)"
    );
    anyhow::ensure!(min <= max, "--autoscale: min {min} is above max {max}");
    Ok((max, min))
}

/// Options every remote command takes, named as `celery inspect`'s.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoteArgs {
    /// Broker URL.
    #[arg(
        short = 'b',
        long,
        env = "GREENPOOL_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value_t = 1.0)]
    timeout: f64,
    /// Comma-separated node names to ask (default: all).
    #[arg(short = 'd', long, value_delimiter = ',')]
    destination: Option<Vec<String>>,
    /// Print the replies as JSON.
    #[arg(short = 'j', long)]
    json: bool,
    #[command(flatten)]
    transport: crate::transport_args::TransportArgs,
}

/// Arguments of `greenpool control`.
#[derive(Debug, clap::Args)]
pub(crate) struct ControlArgs {
    /// The command: revoke, terminate, rate_limit, time_limit, pool_grow,
    /// pool_shrink, autoscale, enable_events, disable_events, heartbeat,
    /// add_consumer, cancel_consumer, shutdown, or any other a worker knows.
    command: String,
    /// The command's arguments, in `celery control`'s order.
    args: Vec<String>,
    /// revoke: also kill the task if it runs.
    #[arg(long)]
    terminate: bool,
    /// revoke --terminate: the signal (SIGTERM by default).
    #[arg(long)]
    signal: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// How a command's positional arguments are named and typed, as in
/// Celery's control panel: fixed arguments first, then the rest under one
/// variadic name.
pub(crate) fn compile(command: &str, args: &[String]) -> anyhow::Result<Map<String, Value>> {
    let (fixed, variadic): (&[(&str, char)], Option<&str>) = match command {
        "revoke" => (&[], Some("task_id")),
        "terminate" => (&[("signal", 's')], Some("task_id")),
        "rate_limit" => (&[("task_name", 's'), ("rate_limit", 's')], None),
        "time_limit" => (&[("task_name", 's'), ("soft", 'f'), ("hard", 'f')], None),
        "pool_grow" | "pool_shrink" => (&[("n", 'i')], None),
        "autoscale" => (&[("max", 'i'), ("min", 'i')], None),
        "add_consumer" => (
            &[
                ("queue", 's'),
                ("exchange", 's'),
                ("exchange_type", 's'),
                ("routing_key", 's'),
            ],
            None,
        ),
        "cancel_consumer" => (&[("queue", 's')], None),
        "query_task" => (&[], Some("ids")),
        "registered" | "dump_tasks" => (&[], Some("taskinfoitems")),
        "conf" | "dump_conf" => (&[("with_defaults", 'b')], None),
        _ => (&[], None),
    };
    let mut out = Map::new();
    let mut rest = args.iter();
    for (name, kind) in fixed {
        let Some(a) = rest.next() else { break };
        let v = match kind {
            'i' => json!(a
                .parse::<i64>()
                .with_context(|| format!("{command}: {name} must be a whole number, not {a:?}"))?),
            'f' => json!(a
                .parse::<f64>()
                .with_context(|| format!("{command}: {name} must be a number, not {a:?}"))?),
            'b' => json!(matches!(
                a.to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )),
            _ => json!(a),
        };
        out.insert((*name).to_owned(), v);
    }
    let rest: Vec<&String> = rest.collect();
    match variadic {
        Some(name) => {
            out.insert(name.to_owned(), json!(rest));
        }
        None => anyhow::ensure!(
            rest.is_empty(),
            "{command} takes at most {} argument(s); got {}",
            fixed.len(),
            args.len()
        ),
    }
    Ok(out)
}

/// Sends `command` and prints the replies as `celery inspect`/`control`
/// does; fails when no node replied.
pub(crate) fn remote(
    remote: &RemoteArgs,
    command: &str,
    arguments: Map<String, Value>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        remote.timeout.is_finite() && remote.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    let options = remote.transport.broker()?;
    remote.transport.result_backend()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let replies: Replies = runtime.block_on(async {
        let control = Control::connect_with(&remote.broker, &options).await?;
        let mut opts = ControlOptions::default().timeout(Duration::from_secs_f64(remote.timeout));
        if let Some(d) = &remote.destination {
            opts = opts.destination(d.clone());
        }
        anyhow::Ok(control.call(command, arguments, opts).await?)
    })?;
    anyhow::ensure!(
        !replies.is_empty(),
        "No nodes replied within time constraint"
    );
    if remote.json {
        let list: Vec<Value> = replies
            .iter()
            .map(|(n, v)| json!({ n.clone(): v }))
            .collect();
        println!("{}", Value::Array(list));
        return Ok(());
    }
    for (node, reply) in &replies {
        let (status, body) = pretty(reply);
        println!("->  {node}: {status}");
        println!("{}", indent(&body, 4));
    }
    let n = replies.len();
    println!("\n{n} {} online.", if n == 1 { "node" } else { "nodes" });
    Ok(())
}

/// Celery's `pretty`: a status word and the text under it.
fn pretty(v: &Value) -> (&'static str, String) {
    match v {
        Value::Array(items) if items.is_empty() => ("OK", "- empty -".to_owned()),
        Value::Array(items) => (
            "OK",
            items
                .iter()
                .map(|i| format!("* {}", plain(i)))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Object(m) if m.contains_key("ok") => ("OK", indent(&pretty(&m["ok"]).1, 4)),
        Value::Object(m) if m.contains_key("error") => ("ERROR", indent(&pretty(&m["error"]).1, 4)),
        Value::Object(_) => ("OK", serde_json::to_string_pretty(v).unwrap_or_default()),
        Value::String(s) => ("OK", s.clone()),
        other => ("OK", other.to_string()),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `greenpool control`.
pub(crate) fn run(a: ControlArgs) -> anyhow::Result<()> {
    let mut arguments = compile(&a.command, &a.args)?;
    if a.command == "revoke" && a.terminate {
        arguments.insert("terminate".into(), json!(true));
        arguments.insert(
            "signal".into(),
            json!(a.signal.as_deref().unwrap_or("SIGTERM")),
        );
    }
    remote(&a.remote, &a.command, arguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_arguments_as_celery() {
        let a = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            compile("pool_grow", &a(&["5"])).unwrap(),
            json!({"n": 5}).as_object().unwrap().clone()
        );
        assert_eq!(
            compile("terminate", &a(&["SIGKILL", "x", "y"])).unwrap(),
            json!({"signal": "SIGKILL", "task_id": ["x", "y"]})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(
            compile("rate_limit", &a(&["greenpool.add", "10/s"])).unwrap(),
            json!({"task_name": "greenpool.add", "rate_limit": "10/s"})
                .as_object()
                .unwrap()
                .clone()
        );
        assert!(compile("pool_grow", &a(&["x"])).is_err());
        assert!(compile("ping", &a(&["x"])).is_err());
        assert_eq!(parse_autoscale("10,3").unwrap(), (10, 3));
        assert!(parse_autoscale("3,10").is_err());
    }

    #[test]
    fn prints_like_celery() {
        assert_eq!(
            pretty(&json!({"ok": "pong"})),
            ("OK", "    pong".to_owned())
        );
        assert_eq!(pretty(&json!([])), ("OK", "- empty -".to_owned()));
        assert_eq!(pretty(&json!({"error": "x"})).0, "ERROR");
    }
}

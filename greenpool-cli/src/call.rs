//! `greenpool call`: send a task by name, like `celery call`, or a canvas
//! (chain, group, chord) written as JSON.

use std::time::Duration;

use anyhow::Context;
use greenpool_celery::{Client, SendOptions, Signature, Timestamp};
use serde_json::{Map, Value};

/// Arguments of `greenpool call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// Task name, e.g. greenpool.add (not with --canvas).
    #[arg(required_unless_present = "canvas")]
    name: Option<String>,
    /// Positional arguments as a JSON list, e.g. '[2, 3]'.
    #[arg(default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// Send a canvas instead of one task: a Celery signature as JSON, as
    /// Python's `dict(signature)` writes it, e.g. '{"task": "celery.chord",
    /// "subtask_type": "chord", "kwargs": {"header": [...], "body": {...}}}';
    /// call options go in each signature's "options".
    #[arg(
        long,
        conflicts_with_all = ["name", "queue", "countdown", "expires", "priority"]
    )]
    canvas: Option<String>,
    /// Broker URL.
    #[arg(
        short = 'b',
        long,
        env = "GREENPOOL_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Result backend URL (default: the broker's).
    #[arg(long, env = "GREENPOOL_RESULT_BACKEND")]
    result_backend: Option<String>,
    /// Queue to send to [default: celery].
    #[arg(short = 'Q', long)]
    queue: Option<String>,
    /// Run no earlier than this many seconds from now.
    #[arg(long)]
    countdown: Option<f64>,
    /// Revoke if not started within this many seconds.
    #[arg(long)]
    expires: Option<f64>,
    /// Priority 0-9 (on Redis, lower runs first).
    #[arg(long)]
    priority: Option<u8>,
    /// Wait for the result and print it.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    #[command(flatten)]
    transport: crate::transport_args::TransportArgs,
}

fn seconds(name: &'static str, s: f64) -> anyhow::Result<Duration> {
    greenpool_celery::seconds::duration_from_secs(name, s)
        .with_context(|| format!("--{name} must be zero or more seconds, at most 100 years"))
}

/// Sends the task, prints its id, and with `--wait` its result.
pub(crate) fn run(a: CallArgs) -> anyhow::Result<()> {
    let args: Vec<Value> =
        serde_json::from_str(&a.args).context("ARGS must be a JSON list, e.g. '[2, 3]'")?;
    let kwargs: Map<String, Value> = serde_json::from_str(&a.kwargs)
        .context("--kwargs must be a JSON object, e.g. '{\"y\": 3}'")?;
    let mut options =
        SendOptions::default().queue(a.queue.clone().unwrap_or_else(|| "celery".to_owned()));
    if let Some(c) = a.countdown {
        let eta = Timestamp::now()
            .checked_add(seconds("countdown", c)?)
            .context("--countdown lies beyond the year 9999")?;
        options = options.eta(eta);
    }
    if let Some(e) = a.expires {
        let expires = Timestamp::now()
            .checked_add(seconds("expires", e)?)
            .context("--expires lies beyond the year 9999")?;
        options = options.expires(expires);
    }
    if let Some(p) = a.priority {
        options = options.priority(p);
    }
    let timeout = seconds("timeout", a.timeout)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let canvas: Option<Signature> = a
        .canvas
        .as_deref()
        .map(|c| {
            serde_json::from_str::<Value>(c)
                .ok()
                .and_then(|v| match v {
                    Value::Object(m) => Some(Signature(m)),
                    _ => None,
                })
                .context("--canvas must be a signature as a JSON object, e.g. '{\"task\": \"celery.group\", \"subtask_type\": \"group\", \"kwargs\": {\"tasks\": [...]}}'")
        })
        .transpose()?;
    let client_options = a.transport.client()?;
    runtime.block_on(async move {
        let backend = a.result_backend.clone().unwrap_or_else(|| a.broker.clone());
        let client = Client::connect_with(&a.broker, Some(&backend), client_options).await?;
        if let Some(canvas) = canvas {
            let result = client.apply(&canvas).await?;
            println!("{}", result.id());
            if a.wait {
                println!("{}", result.get(timeout).await?);
            }
            return Ok(());
        }
        let name = a
            .name
            .as_deref()
            .context("a task name or --canvas is needed")?;
        let result = client.send_task(name, args, kwargs, options).await?;
        println!("{}", result.id());
        if a.wait {
            let value = result.get(timeout).await?;
            println!("{value}");
        }
        Ok(())
    })
}

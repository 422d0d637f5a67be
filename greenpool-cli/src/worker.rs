//! `greenpool worker`: a Celery worker on Redis serving the built-in tasks.

use anyhow::Context;
use greenpool_celery::{Worker, WorkerConfig};

/// Arguments of `greenpool worker`, named as `celery worker`'s. Each
/// setting can also come from its `GREENPOOL_*` variable (listed under
/// `--help`), read by the library's one parser; a flag given on the
/// command line wins over the variable.
#[derive(Debug, clap::Args)]
#[command(after_help = env_help())]
pub(crate) struct WorkerArgs {
    /// Broker URL: redis://host:port/db, or amqp://user:pass@host:port/vhost
    /// (amqps://, pyamqp://) for RabbitMQ [default: redis://127.0.0.1:6379/0].
    #[arg(short = 'b', long)]
    broker: Option<String>,
    /// Result backend URL (default: the broker's); `none` stores no results.
    #[arg(long)]
    result_backend: Option<String>,
    /// Tasks run at once (the pool limit) [default: 1000].
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Queues to consume, comma-separated [default: celery].
    #[arg(short = 'Q', long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Unacked messages per pool slot [default: 4].
    #[arg(long)]
    prefetch_multiplier: Option<usize>,
    /// Node name; `%h` is replaced by the host name.
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// debug, info, warning, error or critical.
    #[arg(short = 'l', long, default_value = "info")]
    pub(crate) loglevel: String,
    /// Ack after tasks end instead of when they start.
    #[arg(long)]
    acks_late: bool,
    /// Store STARTED when tasks start.
    #[arg(long)]
    track_started: bool,
    /// Store name, args, kwargs, worker, retries and queue with results.
    #[arg(long)]
    result_extended: bool,
    /// Seconds results are kept (0: forever) [default: 86400].
    #[arg(long)]
    result_expires: Option<u64>,
    /// Seconds after which unacked messages go back to their queue
    /// [default: 3600]; refused when --broker-transport-options sets
    /// another visibility_timeout.
    #[arg(long)]
    visibility_timeout: Option<f64>,
    /// Seconds between restore sweeps [default: 100].
    #[arg(long)]
    restore_interval: Option<f64>,
    /// Redis: replicas that must hold each batch of results and acks
    /// before it counts as written (WAIT); closes the window in which a
    /// failover loses what the old master never replicated [default: 0].
    #[arg(long)]
    sync_replicas: Option<u32>,
    /// Redis: seconds one WAIT for the replicas may take before the batch
    /// is written again on a new connection [default: 1].
    #[arg(long)]
    sync_replicas_timeout: Option<f64>,
    /// Celery's broker_transport_options as JSON: `global_keyprefix`,
    /// `sep`, `priority_steps`, `unacked_key`, `unacked_index_key`,
    /// `unacked_mutex_key`, `fanout_prefix`, `fanout_patterns`,
    /// `queue_order_strategy`, `visibility_timeout`, `socket_timeout`,
    /// `socket_connect_timeout`, `health_check_interval`, `master_name`
    /// and `sentinel_kwargs` for a sentinel:// broker; any other key is
    /// refused, with its reason.
    #[arg(long, value_name = "JSON")]
    broker_transport_options: Option<String>,
    /// Celery's result_backend_transport_options as JSON: `master_name`
    /// and `sentinel_kwargs` for a sentinel:// result backend.
    #[arg(long, value_name = "JSON")]
    result_backend_transport_options: Option<String>,
    /// Operating the worker: -E, --autoscale, time limits.
    #[command(flatten)]
    control: crate::control::WorkerControlArgs,
    /// Reconnect when a broker connection is lost
    /// (`broker_connection_retry`) [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    broker_connection_retry: Option<bool>,
    /// Reconnection attempts before exiting non-zero (0: retry forever)
    /// [default: 100].
    #[arg(long)]
    broker_connection_max_retries: Option<u32>,
    /// Retry the first connection too (default: as --broker-connection-retry).
    #[arg(long, action = clap::ArgAction::Set)]
    broker_connection_retry_on_startup: Option<bool>,
    /// Largest message accepted, in bytes; larger ones are removed unread
    /// and failed [default: 67108864].
    #[arg(long)]
    max_message_size: Option<usize>,
    /// AMQP: declare queues with this `x-max-priority`
    /// (`task_queue_max_priority`).
    #[arg(long)]
    queue_max_priority: Option<u8>,
    /// AMQP: declare quorum queues (`x-queue-type: quorum`).
    #[arg(long)]
    quorum_queues: bool,
}

/// The variables `greenpool worker` reads, for its `--help`.
fn env_help() -> String {
    let mut text = String::from("Environment (a flag given wins):\n");
    for (name, what) in greenpool_celery::WORKER_VARIABLES {
        text.push_str(&format!("  {name:<46} {what}\n"));
    }
    text
}

impl WorkerArgs {
    /// The library settings: its defaults, then the `GREENPOOL_*`
    /// variables, then the flags given.
    pub(crate) fn config(&self) -> anyhow::Result<WorkerConfig> {
        let secs = |name: &'static str, s: f64| {
            greenpool_celery::seconds::duration_from_secs(name, s).with_context(|| {
                format!("--{name} must be zero or more seconds, at most 100 years")
            })
        };
        let mut config = WorkerConfig::new("redis://127.0.0.1:6379/0").with_env()?;
        if let Some(url) = &self.broker {
            // The result backend follows the broker unless set apart.
            if config.result_backend.as_deref() == Some(config.broker_url.as_str()) {
                config.result_backend = Some(url.clone());
            }
            config.broker_url = url.clone();
        }
        if let Some(n) = self.concurrency {
            config.concurrency = n;
        }
        if let Some(queues) = &self.queues {
            config = config.queues(
                queues
                    .iter()
                    .map(|q| q.trim().to_owned())
                    .filter(|q| !q.is_empty()),
            );
        }
        if let Some(m) = self.prefetch_multiplier {
            config.prefetch_multiplier = m;
        }
        config.acks_late |= self.acks_late;
        config.track_started |= self.track_started;
        config.result_extended |= self.result_extended;
        config.amqp.quorum_queues |= self.quorum_queues;
        if let Some(s) = self.result_expires {
            config.result_expires = match s {
                0 => None,
                s => Some(secs("result-expires", s as f64)?),
            };
        }
        if let Some(json) = &self.broker_transport_options {
            let t = greenpool_celery::TransportOptions::parse(json, "broker")?;
            let flag = self
                .visibility_timeout
                .map(|s| secs("visibility-timeout", s))
                .transpose()?;
            t.check_visibility_timeout(flag, "--visibility-timeout")?;
            config = config.broker_transport_options(t);
        }
        if let Some(json) = &self.result_backend_transport_options {
            let t = greenpool_celery::TransportOptions::parse(json, "result backend")?;
            config = config.result_backend_transport_options(t);
        }
        if let Some(s) = self.visibility_timeout {
            config.redis.visibility_timeout = secs("visibility-timeout", s)?;
        }
        if let Some(s) = self.restore_interval {
            config.redis.restore_interval = secs("restore-interval", s)?;
        }
        if let Some(n) = self.sync_replicas {
            config.redis.sync_replicas = n;
        }
        if let Some(s) = self.sync_replicas_timeout {
            config.redis.sync_replicas_timeout = secs("sync-replicas-timeout", s)?;
        }
        if let Some(b) = self.broker_connection_retry {
            config.connection.retry = b;
        }
        if let Some(n) = self.broker_connection_max_retries {
            config = config.broker_connection_max_retries(Some(n));
        }
        if let Some(b) = self.broker_connection_retry_on_startup {
            config.connection.retry_on_startup = Some(b);
        }
        if let Some(n) = self.max_message_size {
            config.limits.max_message_size = n;
        }
        if let Some(p) = self.queue_max_priority {
            config.amqp.queue_max_priority = Some(p);
        }
        if let Some(url) = &self.result_backend {
            config.result_backend = (!url.eq_ignore_ascii_case("none")).then(|| url.clone());
        }
        config = self.control.apply(config)?;
        if let Some(name) = &self.hostname {
            config.hostname = greenpool_celery::node_name(name);
        }
        config.validate()?;
        Ok(config)
    }
}

/// How long a cold shutdown may take before the process exits anyway.
const COLD_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Exit status when the process ends without a clean shutdown.
const EXIT_FORCED: i32 = 1;

/// Runs the worker until SIGTERM/SIGINT (warm shutdown; a second signal
/// is cold, and a third, or a cold shutdown lasting longer than
/// [`COLD_GRACE`], ends the process with status 1).
pub(crate) fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let registry = crate::builtin_tasks::registry();
        tracing::info!(
            "[tasks]\n{}",
            registry
                .names()
                .iter()
                .map(|n| format!("  . {n}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let hostname = config.hostname.clone();
        let worker = Worker::new(config, registry)?;
        let stop = worker.shutdown_handle();
        let ready = worker.ready();
        tokio::spawn(async move {
            ready.notified().await;
            tracing::info!("{hostname} ready.");
        });
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            let mut cold = false;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if cold {
                    // The handlers stay installed for the life of the
                    // process, so a signal is never swallowed: the third
                    // one ends the process at once.
                    tracing::error!("worker: third signal; exiting now without a clean shutdown");
                    std::process::exit(EXIT_FORCED);
                }
                if stop.escalate() {
                    cold = true;
                    tracing::warn!(
                        "worker: cold shutdown requested (second signal); signal again to exit at once"
                    );
                    // A cold shutdown always ends the process, even when
                    // Redis does not answer any more.
                    std::thread::spawn(|| {
                        std::thread::sleep(COLD_GRACE);
                        tracing::error!(
                            "worker: cold shutdown did not finish within {} s; exiting now",
                            COLD_GRACE.as_secs()
                        );
                        std::process::exit(EXIT_FORCED);
                    });
                    continue;
                }
                tracing::warn!("worker: warm shutdown requested; signal again for a cold shutdown");
            }
        });
        let report = worker.run().await?;
        tracing::info!(
            "worker stopped: {} received, {} succeeded, {} failed, {} revoked, {} restored",
            report.received,
            report.succeeded,
            report.failed,
            report.revoked,
            report.restored
        );
        Ok(())
    })
}

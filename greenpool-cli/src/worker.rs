//! `greenpool worker`: a Celery worker on Redis serving the built-in tasks.

use anyhow::Context;
use greenpool_celery::{Worker, WorkerConfig};

/// Arguments of `greenpool worker`, named as `celery worker`'s.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Broker URL.
    #[arg(
        short = 'b',
        long,
        env = "GREENPOOL_BROKER_URL",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    broker: String,
    /// Result backend URL (default: the broker's); `none` stores no results.
    #[arg(long, env = "GREENPOOL_RESULT_BACKEND")]
    result_backend: Option<String>,
    /// Tasks run at once (the pool limit).
    #[arg(
        short = 'c',
        long,
        env = "GREENPOOL_CONCURRENCY",
        default_value_t = 1000
    )]
    concurrency: usize,
    /// Queues to consume, comma-separated.
    #[arg(
        short = 'Q',
        long,
        env = "GREENPOOL_QUEUES",
        value_delimiter = ',',
        default_value = "celery"
    )]
    queues: Vec<String>,
    /// Unacked messages per pool slot.
    #[arg(long, env = "GREENPOOL_PREFETCH_MULTIPLIER", default_value_t = 4)]
    prefetch_multiplier: usize,
    /// Node name; `%h` is replaced by the host name.
    #[arg(short = 'n', long, env = "GREENPOOL_HOSTNAME")]
    hostname: Option<String>,
    /// debug, info, warning, error or critical.
    #[arg(short = 'l', long, default_value = "info")]
    pub(crate) loglevel: String,
    /// Ack after tasks end instead of when they start.
    #[arg(long, env = "GREENPOOL_ACKS_LATE")]
    acks_late: bool,
    /// Store STARTED when tasks start.
    #[arg(long, env = "GREENPOOL_TRACK_STARTED")]
    track_started: bool,
    /// Store name, args, kwargs, worker, retries and queue with results.
    #[arg(long, env = "GREENPOOL_RESULT_EXTENDED")]
    result_extended: bool,
    /// Seconds results are kept (0: forever).
    #[arg(long, env = "GREENPOOL_RESULT_EXPIRES", default_value_t = 86_400)]
    result_expires: u64,
    /// Seconds after which unacked messages go back to their queue.
    #[arg(long, env = "GREENPOOL_VISIBILITY_TIMEOUT", default_value_t = 3600.0)]
    visibility_timeout: f64,
    /// Seconds between restore sweeps.
    #[arg(long, env = "GREENPOOL_RESTORE_INTERVAL", default_value_t = 100.0)]
    restore_interval: f64,
    /// Operating the worker: -E, --autoscale, time limits.
    #[command(flatten)]
    control: crate::control::WorkerControlArgs,
    /// Reconnect when a Redis connection is lost (`broker_connection_retry`).
    #[arg(long, env = "GREENPOOL_BROKER_CONNECTION_RETRY", default_value_t = true, action = clap::ArgAction::Set)]
    broker_connection_retry: bool,
    /// Reconnection attempts before exiting non-zero (0: retry forever).
    #[arg(
        long,
        env = "GREENPOOL_BROKER_CONNECTION_MAX_RETRIES",
        default_value_t = 100
    )]
    broker_connection_max_retries: u32,
    /// Retry the first connection too (default: as --broker-connection-retry).
    #[arg(long, env = "GREENPOOL_BROKER_CONNECTION_RETRY_ON_STARTUP", action = clap::ArgAction::Set)]
    broker_connection_retry_on_startup: Option<bool>,
    /// Largest message accepted, in bytes; larger ones are removed unread
    /// and failed.
    #[arg(long, env = "GREENPOOL_MAX_MESSAGE_SIZE", default_value_t = greenpool_celery::DEFAULT_MAX_MESSAGE_SIZE)]
    max_message_size: usize,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl WorkerArgs {
    /// The library settings these flags describe.
    pub(crate) fn config(&self) -> anyhow::Result<WorkerConfig> {
        let secs = |name: &'static str, s: f64| {
            greenpool_celery::seconds::duration_from_secs(name, s).with_context(|| {
                format!("--{name} must be zero or more seconds, at most 100 years")
            })
        };
        let mut config = WorkerConfig::new(self.broker.clone())
            .concurrency(self.concurrency)
            .queues(
                self.queues
                    .iter()
                    .map(|q| q.trim().to_owned())
                    .filter(|q| !q.is_empty()),
            )
            .prefetch_multiplier(self.prefetch_multiplier)
            .acks_late(self.acks_late)
            .track_started(self.track_started)
            .result_extended(self.result_extended)
            .result_expires(match self.result_expires {
                0 => None,
                s => Some(secs("result-expires", s as f64)?),
            })
            .visibility_timeout(secs("visibility-timeout", self.visibility_timeout)?)
            .restore_interval(secs("restore-interval", self.restore_interval)?)
            .broker_connection_retry(self.broker_connection_retry)
            .broker_connection_max_retries(Some(self.broker_connection_max_retries))
            .broker_connection_retry_on_startup(self.broker_connection_retry_on_startup)
            .max_message_size(self.max_message_size);
        if let Some(url) = &self.result_backend {
            config =
                config.result_backend((!url.eq_ignore_ascii_case("none")).then(|| url.clone()));
        }
        config = self.control.apply(config)?;
        if let Some(name) = &self.hostname {
            let name = name.replace("%h", &host_name());
            config = config.hostname(if name.contains('@') {
                name
            } else {
                format!("celery@{name}")
            });
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

//! Log lines in Celery's shape:
//! `[2026-11-24 16:51:25,595: INFO/MainProcess] Task tasks.add[…] received`.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The event formatter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CeleryFormat;

impl<S, N> FormatEvent<S, N> for CeleryFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // ISO text "2026-11-24T16:51:25.595779+00:00" -> "2026-11-24 16:51:25,595"
        let now = greenpool_celery::Timestamp::now().to_string();
        let (date, rest) = now.split_at(10);
        let time = rest.get(1..9).unwrap_or("");
        let millis = rest.get(10..13).unwrap_or("000");
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG | tracing::Level::TRACE => "DEBUG",
        };
        write!(writer, "[{date} {time},{millis}: {level}/MainProcess] ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Whether standard error is a terminal: colour codes only then, never
/// in log files or pipes.
pub(crate) fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Installs the global subscriber at Celery's `--loglevel` (debug, info,
/// warning, error, critical); `RUST_LOG` overrides it.
pub(crate) fn init(loglevel: &str) {
    let level = match loglevel.to_ascii_lowercase().as_str() {
        "debug" | "trace" => "debug",
        "warning" | "warn" => "warn",
        "error" | "critical" | "fatal" => "error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal())
        .event_format(CeleryFormat)
        .try_init();
}

//! `--broker-transport-options` and `--result-backend-transport-options`
//! of `greenpool call`, `inspect` and `control`: the same JSON, and the
//! same variables, as the worker reads, so that a command names its keys
//! as the deployment's workers do.

use anyhow::Context;
use greenpool_celery::{ClientOptions, TransportOptions};

/// The transport options of a command that talks to the workers.
#[derive(Debug, clap::Args)]
pub(crate) struct TransportArgs {
    /// Celery's broker_transport_options as JSON, as the workers have
    /// them: global_keyprefix, sep, priority_steps, fanout_prefix, ...,
    /// master_name and sentinel_kwargs for a sentinel:// broker. Any key
    /// greenpool does not support is refused.
    #[arg(long, env = "GREENPOOL_BROKER_TRANSPORT_OPTIONS", value_name = "JSON")]
    broker_transport_options: Option<String>,
    /// Celery's result_backend_transport_options as JSON: master_name and
    /// sentinel_kwargs for a sentinel:// result backend. (inspect and
    /// control never read results: there they are only checked.)
    #[arg(
        long,
        env = "GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS",
        value_name = "JSON"
    )]
    result_backend_transport_options: Option<String>,
}

impl TransportArgs {
    /// The broker's options (kombu's defaults when none are given).
    pub(crate) fn broker(&self) -> anyhow::Result<TransportOptions> {
        read(self.broker_transport_options.as_deref(), "broker")
            .context("--broker-transport-options (or GREENPOOL_BROKER_TRANSPORT_OPTIONS)")
    }

    /// The result backend's options.
    pub(crate) fn result_backend(&self) -> anyhow::Result<TransportOptions> {
        read(
            self.result_backend_transport_options.as_deref(),
            "result backend",
        )
        .context(
            "--result-backend-transport-options (or GREENPOOL_RESULT_BACKEND_TRANSPORT_OPTIONS)",
        )
    }

    /// Both, for the client.
    pub(crate) fn client(&self) -> anyhow::Result<ClientOptions> {
        Ok(ClientOptions::default()
            .broker_transport_options(self.broker()?)
            .result_backend_transport_options(self.result_backend()?))
    }
}

fn read(json: Option<&str>, which: &'static str) -> anyhow::Result<TransportOptions> {
    Ok(match json {
        Some(j) => TransportOptions::parse(j, which)?,
        None => TransportOptions::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(broker: Option<&str>, backend: Option<&str>) -> TransportArgs {
        TransportArgs {
            broker_transport_options: broker.map(str::to_owned),
            result_backend_transport_options: backend.map(str::to_owned),
        }
    }

    #[test]
    fn reads_both_and_names_the_flag_on_errors() {
        let a = args(Some(r#"{"global_keyprefix": "gp:"}"#), None);
        let c = a.client().unwrap();
        assert_eq!(c.broker.keys.global_keyprefix, "gp:");
        assert_eq!(c.result_backend, TransportOptions::default());
        let e = args(Some(r#"{"max_connections": 3}"#), None)
            .client()
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("--broker-transport-options"),
            "{e:#}"
        );
        let e = args(None, Some(r#"{"global_keyprefix": "x"}"#))
            .client()
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("--result-backend-transport-options"),
            "{e:#}"
        );
    }
}

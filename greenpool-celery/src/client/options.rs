//! [`ClientOptions`]: the transport options a [`Client`](super::Client)
//! connects with.

use crate::config::TransportOptions;

/// Celery's `broker_transport_options` and
/// `result_backend_transport_options` for a [`Client`](super::Client):
/// the same settings as the worker's, so that a client and the workers
/// (Python or greenpool) of one deployment name their keys alike.
///
/// ```
/// use greenpool_celery::{ClientOptions, TransportOptions};
/// let options = ClientOptions::default()
///     .broker_transport_options(TransportOptions::parse(
///         r#"{"global_keyprefix": "gp:", "priority_steps": [0, 5]}"#,
///         "broker",
///     )?)
///     .result_backend_transport_options(TransportOptions::parse(
///         r#"{"master_name": "results"}"#,
///         "result backend",
///     )?);
/// assert_eq!(options.broker.keys.global_keyprefix, "gp:");
/// // Then: Client::connect_with("redis://127.0.0.1:6379/0", None, options).await?
/// # Ok::<(), greenpool_celery::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The broker's transport options (key names, sentinel settings,
    /// health check interval; the worker-only ones, `visibility_timeout`
    /// and `queue_order_strategy`, do not change what a client sends).
    pub broker: TransportOptions,
    /// The result backend's transport options.
    pub result_backend: TransportOptions,
}

impl ClientOptions {
    /// Sets the broker's transport options.
    pub fn broker_transport_options(mut self, t: TransportOptions) -> Self {
        self.broker = t;
        self
    }

    /// Sets the result backend's transport options.
    pub fn result_backend_transport_options(mut self, t: TransportOptions) -> Self {
        self.result_backend = t;
        self
    }
}

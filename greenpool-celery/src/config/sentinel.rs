//! [`SentinelOptions`]: what a `sentinel://` URL needs to find its
//! master, read from `broker_transport_options` or
//! `result_backend_transport_options` (see
//! [`TransportOptions`](crate::TransportOptions)).

/// How a `sentinel://` URL finds its master.
///
/// ```
/// use greenpool_celery::TransportOptions;
/// let t = TransportOptions::parse(
///     r#"{"master_name": "mymaster", "sentinel_kwargs": {"password": "s3"}}"#,
///     "broker",
/// ).unwrap();
/// assert_eq!(t.sentinel.master_name.as_deref(), Some("mymaster"));
/// assert_eq!(t.sentinel.sentinel_password.as_deref(), Some("s3"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelOptions {
    /// The name the sentinels monitor the master under (`master_name`).
    pub master_name: Option<String>,
    /// The sentinels' own password (`sentinel_kwargs.password`); the
    /// master's is the URL's.
    pub sentinel_password: Option<String>,
}

//! [`AmqpOptions`]: settings of the AMQP transport.

/// Settings only the AMQP transport reads: how it declares its queues.
///
/// ```
/// use greenpool_celery::WorkerConfig;
/// let config = WorkerConfig::new("amqp://guest:guest@127.0.0.1:5672//").quorum_queues(true);
/// assert!(config.amqp.quorum_queues);
/// assert_eq!(config.amqp.queue_max_priority, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// Declare the queues with `x-max-priority` set to this (Celery's
    /// `task_queue_max_priority`); `None` declares none.
    pub queue_max_priority: Option<u8>,
    /// Declare the queues as quorum queues (`x-queue-type: quorum`),
    /// which rules out a global QoS (Celery 5.5+ does the same).
    pub quorum_queues: bool,
}

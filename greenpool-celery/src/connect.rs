//! Opening Redis connections with the timeouts the worker needs.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::error::BrokerError;

/// Opens a multiplexed connection to `url`. Responses have no timeout:
/// BRPOP blocks for its own timeout, and large pipelines under load may
/// take longer than redis-rs's default half second.
pub(crate) async fn connect(
    url: &str,
) -> Result<(redis::Client, MultiplexedConnection), BrokerError> {
    let client = redis::Client::open(url).map_err(BrokerError::Url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(None);
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(BrokerError::Connect)?;
    Ok((client, conn))
}

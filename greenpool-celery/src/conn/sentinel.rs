//! A link whose server is the master Redis Sentinel names: Celery's
//! `sentinel://host:port/db;sentinel://host2:port/db` URLs, with the
//! master's name (and the sentinels' password) from the transport
//! options. The master is asked for again on every connection, so a
//! reconnect after a failover reaches the new one; the redis crate's
//! sentinel client checks that the server it names calls itself master
//! (`ROLE`).

use redis::io::tcp::TcpSettings;
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::config::SentinelOptions;
use crate::error::BrokerError;

/// Whether `url` is a Sentinel URL.
pub(crate) fn is_sentinel(url: &str) -> bool {
    url.get(..11)
        .is_some_and(|s| s.eq_ignore_ascii_case("sentinel://"))
}

fn bad(what: &str, detail: String) -> BrokerError {
    BrokerError::Url(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid sentinel URL",
        format!("{what}: {detail}"),
    )))
}

/// The sentinels of a link and the master they name.
pub(crate) struct SentinelTarget {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
    /// The first sentinel's address with the master's database: the
    /// client a link holds before it first connects.
    pub(crate) placeholder: ConnectionInfo,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    /// Reads `url` (`;`-separated `sentinel://` URLs; the password and
    /// database are the master's) with `opts`.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Url`] for a URL that does not parse or options
    /// without `master_name`; [`BrokerError::Tls`] for Celery's `ssl_*`
    /// keys (the sentinels and their master are reached over plain TCP).
    pub(crate) fn from_url(
        url: &str,
        opts: &SentinelOptions,
        tcp: TcpSettings,
    ) -> Result<Self, BrokerError> {
        if super::tls::has_tls_options(url) {
            return Err(BrokerError::Tls {
                url: super::link::redact(url),
                problem: "TLS to Sentinel and its master is not supported: use a rediss:// URL \
                          of the master, or drop the ssl_* keys"
                    .to_owned(),
            });
        }
        let master = opts.master_name.clone().ok_or_else(|| {
            bad(
                "sentinel:// needs the master's name",
                "set master_name in the transport options, e.g. \
                 --broker-transport-options '{\"master_name\": \"mymaster\"}'"
                    .to_owned(),
            )
        })?;
        let mut sentinels = Vec::new();
        let mut master_info: Option<RedisConnectionInfo> = None;
        for part in url.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if !is_sentinel(part) {
                return Err(bad(
                    "each address must start with sentinel://",
                    part.to_owned(),
                ));
            }
            let as_redis = format!("redis://{}", &part[11..]);
            let info = as_redis
                .as_str()
                .into_connection_info()
                .map_err(BrokerError::Url)?;
            if master_info.is_none() {
                master_info = Some(info.redis_settings().clone());
            }
            let mut s = RedisConnectionInfo::default();
            if let Some(p) = &opts.sentinel_password {
                s = s.set_password(p);
            }
            sentinels.push(info.set_redis_settings(s).set_tcp_settings(tcp.clone()));
        }
        let (Some(first), Some(master_info)) = (sentinels.first().cloned(), master_info) else {
            return Err(bad("no sentinel address", url.to_owned()));
        };
        let placeholder = first.set_redis_settings(master_info.clone());
        let sentinel = Sentinel::build(sentinels).map_err(BrokerError::Url)?;
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(master_info)
            .set_tcp_settings(tcp);
        Ok(SentinelTarget {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master,
            node,
            placeholder,
        })
    }

    /// Asks the sentinels where the master is now; a client for it.
    ///
    /// # Errors
    ///
    /// No sentinel answers, none knows the master, or the server named
    /// does not call itself master.
    pub(crate) async fn master(&self) -> redis::RedisResult<redis::Client> {
        let mut s = self.sentinel.lock().await;
        s.async_master_for(&self.master, Some(&self.node)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_celerys_urls_and_needs_a_master_name() {
        let opts = SentinelOptions {
            master_name: Some("mymaster".into()),
            sentinel_password: None,
        };
        let url = "sentinel://:pw@127.0.0.1:26379/3;sentinel://127.0.0.1:26380/3";
        let t = SentinelTarget::from_url(url, &opts, TcpSettings::default()).unwrap();
        assert_eq!(t.placeholder.redis_settings().db(), 3);
        assert_eq!(t.placeholder.redis_settings().password(), Some("pw"));
        assert!(is_sentinel("SENTINEL://x:1"));
        let none = SentinelOptions::default();
        let e = SentinelTarget::from_url(url, &none, TcpSettings::default()).unwrap_err();
        assert!(e.to_string().contains("master_name"), "{e}");
        let e = SentinelTarget::from_url(
            "sentinel://:pw@h:1/0?ssl_cert_reqs=required",
            &opts,
            TcpSettings::default(),
        )
        .unwrap_err();
        assert!(matches!(e, BrokerError::Tls { .. }), "{e}");
        assert!(
            e.to_string().contains("rediss://") && !e.to_string().contains("pw@"),
            "{e}"
        );
        assert!(SentinelTarget::from_url(
            "sentinel://a:1;redis://b:2",
            &opts,
            TcpSettings::default()
        )
        .is_err());
    }
}

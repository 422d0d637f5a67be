//! TLS options of a `rediss://` URL, written as Celery and kombu write
//! them, and the redis client built from such a URL.
//!
//! ```text
//! rediss://:password@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/redis/ca.pem
//! rediss://user:password@host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=ca.pem&ssl_certfile=client.pem&ssl_keyfile=client.key
//! ```
//!
//! * `ssl_cert_reqs`: `required` (`CERT_REQUIRED`) checks the server's
//!   certificate and host name against `ssl_ca_certs`, or against the
//!   system's roots without it; `optional` (`CERT_OPTIONAL`) is the same
//!   for a client, as in Python's `ssl` module; `none` (`CERT_NONE`)
//!   checks nothing (encryption without authentication). Left out, it is
//!   `required`, as kombu's broker has it (Celery's own result backend
//!   insists on the key; greenpool does not).
//! * `ssl_ca_certs`: a PEM file of the CA certificates to trust.
//! * `ssl_certfile`, `ssl_keyfile`: the client's certificate and key (PEM)
//!   for servers that ask for one (`tls-auth-clients yes`); the key may
//!   sit in the certificate's file, then `ssl_keyfile` can be left out.
//!
//! The redis crate does not know these keys, so they are taken off the
//! URL here; the files are read when the client is built. Any other query
//! key on a `rediss://` URL (except the redis crate's `protocol`), a bad
//! value, a file that cannot be read, or TLS options on a `redis://`,
//! `unix://` or `sentinel://` URL is a [`BrokerError::Tls`]: nothing is
//! ignored. User names and passwords (Redis 6 ACL users,
//! `redis://user:password@host/0`) are read by the redis crate itself.

use std::path::PathBuf;

use redis::io::tcp::TcpSettings;
use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use super::link::redact;
use crate::error::BrokerError;

/// Celery's TLS query keys.
const SSL_KEYS: [&str; 4] = [
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
];

/// Query keys the redis crate reads itself on a `rediss://` URL.
const REDIS_KEYS: [&str; 1] = ["protocol"];

/// How the server's certificate is checked (`ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertReqs {
    /// Checked against the CA file or the system's roots.
    Required,
    /// Python's `CERT_OPTIONAL`: for a client, the same as `Required`.
    Optional,
    /// Not checked at all.
    None,
}

impl CertReqs {
    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "required" | "cert_required" => Some(CertReqs::Required),
            "optional" | "cert_optional" => Some(CertReqs::Optional),
            "none" | "cert_none" => Some(CertReqs::None),
            _ => None,
        }
    }
}

/// The TLS options of a URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    /// `ssl_cert_reqs`; left out means required.
    pub(crate) cert_reqs: Option<CertReqs>,
    pub(crate) ca_certs: Option<PathBuf>,
    pub(crate) certfile: Option<PathBuf>,
    pub(crate) keyfile: Option<PathBuf>,
}

impl TlsOptions {
    /// Whether the server's certificate goes unchecked.
    pub(crate) fn insecure(&self) -> bool {
        self.cert_reqs == Some(CertReqs::None)
    }

    /// Reads the files named; `None` when there are none.
    fn certificates(&self, shown: &str) -> Result<Option<TlsCertificates>, BrokerError> {
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                tls_error(
                    shown,
                    format!(
                        "{key}: cannot read {}: {e}; give the path of a readable PEM file",
                        path.display()
                    ),
                )
            })
        };
        let root_cert = match &self.ca_certs {
            Some(path) => {
                let pem = read("ssl_ca_certs", path)?;
                if !contains(&pem, b"-----BEGIN CERTIFICATE-----") {
                    return Err(tls_error(
                        shown,
                        format!(
                            "ssl_ca_certs: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            path.display()
                        ),
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&self.certfile, &self.keyfile) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(tls_error(
                    shown,
                    "ssl_keyfile without ssl_certfile: give the client certificate too".to_owned(),
                ))
            }
            (Some(cert), key) => {
                let client_cert = read("ssl_certfile", cert)?;
                let client_key = match key {
                    Some(key) => read("ssl_keyfile", key)?,
                    None => client_cert.clone(),
                };
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
        };
        Ok(
            (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
                client_tls,
                root_cert,
            }),
        )
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn tls_error(shown: &str, problem: String) -> BrokerError {
    BrokerError::Tls {
        url: shown.to_owned(),
        problem,
    }
}

/// A URL without Celery's TLS keys, and those keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SplitUrl {
    /// What the redis crate reads: the URL without the `ssl_*` keys, with
    /// the fragment `#insecure` for `ssl_cert_reqs=none`.
    pub(crate) url: String,
    pub(crate) tls: TlsOptions,
}

/// Takes Celery's TLS keys off `url` (see the [module docs](self)).
///
/// # Errors
///
/// [`BrokerError::Tls`] for an unknown query key on a `rediss://` URL, a
/// repeated or bad value, or TLS keys on a URL of another scheme.
pub(crate) fn split(url: &str) -> Result<SplitUrl, BrokerError> {
    let unchanged = || SplitUrl {
        url: url.to_owned(),
        tls: TlsOptions::default(),
    };
    // A URL that does not parse is left to the redis crate's own error.
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok(unchanged());
    };
    let shown = redact(url);
    let tls_scheme = matches!(parsed.scheme(), "rediss" | "valkeys");
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (ssl, rest): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|(k, _)| SSL_KEYS.contains(&k.as_str()));
    if !tls_scheme {
        return match ssl.first() {
            None => Ok(unchanged()),
            Some((key, _)) => Err(tls_error(
                &shown,
                format!("{key} needs TLS: write the URL as rediss://"),
            )),
        };
    }
    if let Some((key, _)) = rest.iter().find(|(k, _)| !REDIS_KEYS.contains(&k.as_str())) {
        return Err(tls_error(
            &shown,
            format!(
                "unknown query key {key:?}; a rediss:// URL takes {}, and protocol",
                SSL_KEYS.join(", ")
            ),
        ));
    }
    let mut tls = TlsOptions::default();
    for (key, value) in &ssl {
        let repeated = match key.as_str() {
            "ssl_cert_reqs" => {
                let reqs = CertReqs::parse(value).ok_or_else(|| {
                    tls_error(
                        &shown,
                        format!(
                            "ssl_cert_reqs={value:?}: use required (CERT_REQUIRED), optional \
                             (CERT_OPTIONAL) or none (CERT_NONE)"
                        ),
                    )
                })?;
                tls.cert_reqs.replace(reqs).is_some()
            }
            path_key => {
                if value.is_empty() {
                    return Err(tls_error(
                        &shown,
                        format!("{path_key} is empty: give the path of a PEM file"),
                    ));
                }
                let slot = match path_key {
                    "ssl_ca_certs" => &mut tls.ca_certs,
                    "ssl_certfile" => &mut tls.certfile,
                    _ => &mut tls.keyfile,
                };
                slot.replace(PathBuf::from(value)).is_some()
            }
        };
        if repeated {
            return Err(tls_error(&shown, format!("{key} is given twice: keep one")));
        }
    }
    if ssl.is_empty() {
        return Ok(unchanged());
    }
    if parsed.fragment() == Some("insecure") && tls.cert_reqs.is_some() && !tls.insecure() {
        return Err(tls_error(
            &shown,
            "#insecure contradicts ssl_cert_reqs: drop one of them".to_owned(),
        ));
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&rest);
    }
    if tls.insecure() {
        parsed.set_fragment(Some("insecure"));
    }
    Ok(SplitUrl {
        url: parsed.into(),
        tls,
    })
}

/// Whether any of the `;`-separated URLs in `urls` carries Celery's TLS
/// keys.
pub(crate) fn has_tls_options(urls: &str) -> bool {
    urls.split(';').any(|part| {
        url::Url::parse(part.trim())
            .is_ok_and(|u| u.query_pairs().any(|(k, _)| SSL_KEYS.contains(&k.as_ref())))
    })
}

/// The redis client for `url` (`redis://`, `rediss://` with Celery's TLS
/// keys, `unix://`), with `tcp`'s socket settings.
///
/// # Errors
///
/// [`BrokerError::Tls`] for unusable TLS options (see the [module
/// docs](self)), [`BrokerError::Url`] for a URL the redis crate refuses.
pub(crate) fn client_for(url: &str, tcp: TcpSettings) -> Result<redis::Client, BrokerError> {
    let split = split(url)?;
    let info = split
        .url
        .as_str()
        .into_connection_info()
        .map_err(BrokerError::Url)?
        .set_tcp_settings(tcp);
    match split.tls.certificates(&redact(url))? {
        None => redis::Client::open(info).map_err(BrokerError::Url),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(|e| {
            tls_error(
                &redact(url),
                format!("{e}; ssl_ca_certs, ssl_certfile and ssl_keyfile must be PEM files"),
            )
        }),
    }
}

/// The redis client for a Redis URL, as the worker and
/// [`Client`](crate::Client) build theirs: `redis://`, `unix://`, and
/// `rediss://` with Celery's TLS query keys (`ssl_cert_reqs`,
/// `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`). User names and
/// passwords (Redis ACL users) come from the URL.
///
/// # Errors
///
/// [`BrokerError::Tls`] for TLS options that cannot be used (an unknown
/// query key, a bad value, a file that cannot be read),
/// [`BrokerError::Url`] for a URL that does not parse. Neither names the
/// password.
pub fn redis_client(url: &str) -> Result<redis::Client, BrokerError> {
    client_for(url, TcpSettings::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(url: &str) -> String {
        match split(url) {
            Err(e @ BrokerError::Tls { .. }) => e.to_string(),
            other => panic!("{url}: expected a TLS error, got {other:?}"),
        }
    }

    #[test]
    fn celerys_keys_are_taken_off_the_url() {
        let s = split(
            "rediss://u:pw@h:6380/2?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fetc%2Fca.pem\
             &ssl_certfile=/c.pem&ssl_keyfile=/k.pem&protocol=resp3",
        )
        .unwrap();
        assert_eq!(s.url, "rediss://u:pw@h:6380/2?protocol=resp3");
        assert_eq!(s.tls.cert_reqs, Some(CertReqs::Required));
        assert_eq!(s.tls.ca_certs, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(s.tls.certfile, Some(PathBuf::from("/c.pem")));
        assert_eq!(s.tls.keyfile, Some(PathBuf::from("/k.pem")));
        let s = split("rediss://h:6380/0?ssl_cert_reqs=required").unwrap();
        assert_eq!(s.url, "rediss://h:6380/0");
        assert!(!s.tls.insecure());
    }

    #[test]
    fn every_spelling_of_ssl_cert_reqs() {
        for (v, want) in [
            ("required", CertReqs::Required),
            ("CERT_REQUIRED", CertReqs::Required),
            ("optional", CertReqs::Optional),
            ("CERT_OPTIONAL", CertReqs::Optional),
            ("none", CertReqs::None),
            ("CERT_NONE", CertReqs::None),
        ] {
            let s = split(&format!("rediss://h/0?ssl_cert_reqs={v}")).unwrap();
            assert_eq!(s.tls.cert_reqs, Some(want), "{v}");
        }
        let s = split("rediss://h/0?ssl_cert_reqs=none").unwrap();
        assert_eq!(s.url, "rediss://h/0#insecure");
        assert!(s.tls.insecure());
    }

    #[test]
    fn plain_urls_are_left_alone() {
        for u in [
            "redis://:pw@h:6379/0",
            "redis://h/0?whatever=1",
            "rediss://h:6380/0",
            "unix:///tmp/r.sock?db=2",
            "not a url",
        ] {
            let s = split(u).unwrap();
            assert_eq!(s.url, u);
            assert_eq!(s.tls, TlsOptions::default());
        }
    }

    #[test]
    fn what_cannot_be_used_is_refused_without_the_password() {
        let e = problem("rediss://u:s3cret@h/0?ssl_cert_reqs=required&ssl_check_hostname=true");
        assert!(
            e.contains("ssl_check_hostname") && !e.contains("s3cret"),
            "{e}"
        );
        let e = problem("rediss://u:s3cret@h/0?socket_timeout=3");
        assert!(
            e.contains("socket_timeout") && e.contains("ssl_ca_certs"),
            "{e}"
        );
        let e = problem("rediss://:s3cret@h/0?ssl_cert_reqs=maybe");
        assert!(
            e.contains("maybe") && e.contains("CERT_NONE") && !e.contains("s3cret"),
            "{e}"
        );
        let e = problem("redis://:s3cret@h/0?ssl_cert_reqs=required");
        assert!(e.contains("rediss://") && !e.contains("s3cret"), "{e}");
        let e = problem("rediss://h/0?ssl_ca_certs=");
        assert!(e.contains("ssl_ca_certs is empty"), "{e}");
        let e = problem("rediss://h/0?ssl_cert_reqs=none&ssl_cert_reqs=required");
        assert!(e.contains("twice"), "{e}");
        let e = problem("rediss://h/0?ssl_cert_reqs=required#insecure");
        assert!(e.contains("#insecure"), "{e}");
    }

    #[test]
    fn files_are_read_when_the_client_is_built() {
        let missing =
            std::env::temp_dir().join(format!("greenpool-no-ca-{}.pem", std::process::id()));
        let url = format!(
            "rediss://u:s3cret@127.0.0.1:1/0?ssl_cert_reqs=required&ssl_ca_certs={}",
            missing.display()
        );
        let e = redis_client(&url).unwrap_err().to_string();
        assert!(
            e.contains("ssl_ca_certs") && e.contains("cannot read") && !e.contains("s3cret"),
            "{e}"
        );
        let not_pem =
            std::env::temp_dir().join(format!("greenpool-not-pem-{}.pem", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let url = format!("rediss://h:1/0?ssl_ca_certs={}", not_pem.display());
        let e = redis_client(&url).unwrap_err().to_string();
        let _ = std::fs::remove_file(&not_pem);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = redis_client("rediss://h:1/0?ssl_keyfile=/k.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ssl_certfile"), "{e}");
        // Without files the client is the redis crate's own.
        assert!(redis_client("rediss://h:1/0?ssl_cert_reqs=none").is_ok());
        assert!(redis_client("redis://alice:pw@h:1/0").is_ok());
    }

    #[test]
    fn sentinel_urls_with_tls_options_are_spotted() {
        assert!(has_tls_options(
            "sentinel://h:1/0;sentinel://h:2/0?ssl_cert_reqs=none"
        ));
        assert!(!has_tls_options("sentinel://h:1/0;sentinel://h:2/0"));
    }
}

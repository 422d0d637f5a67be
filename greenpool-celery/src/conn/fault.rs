//! How a failed Redis call is handled, from its error.

/// What a failed call means for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The connection is gone or stalled: reconnect, then retry.
    Lost,
    /// The server is there but cannot serve this now (loading its data
    /// after a restart, at `maxmemory` with `noeviction`, a replica that
    /// is read-only, a busy script): retry later on the same connection.
    Busy,
    /// The server lost its scripts (restart, `SCRIPT FLUSH`): load them
    /// and retry.
    NoScript,
    /// The command itself is wrong for the data (e.g. `WRONGTYPE`):
    /// retrying will not help.
    Command,
}

impl Fault {
    /// Sorts `e`.
    pub(crate) fn of(e: &redis::RedisError) -> Fault {
        use redis::{ErrorKind, ServerErrorKind};
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            return Fault::Lost;
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::NoScript) => Fault::NoScript,
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::ClusterDown,
            ) => Fault::Busy,
            ErrorKind::Io => Fault::Lost,
            _ => match e.code() {
                Some("OOM" | "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN") => {
                    Fault::Busy
                }
                _ => Fault::Command,
            },
        }
    }
}

impl Fault {
    /// What to check when the server refused this client rather than
    /// failed it: wrong credentials or a failed TLS handshake, which no
    /// retry fixes. `None` for any other error.
    pub(crate) fn refusal(e: &redis::RedisError) -> Option<&'static str> {
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        {
            return Some(
                "check the user name and password in the URL (redis://user:password@host:port/db)",
            );
        }
        if e.code() == Some("NOPERM") {
            return Some(
                "the user lacks a permission: grant it with ACL SETUSER (e.g. +@all ~* &*)",
            );
        }
        // The redis crate keeps an I/O error behind an `Arc<dyn Error>`;
        // rustls's errors arrive as `InvalidData`.
        type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
        let io = std::error::Error::source(e).and_then(|s| {
            s.downcast_ref::<std::io::Error>().or_else(|| {
                s.downcast_ref::<Shared>()
                    .and_then(|a| a.downcast_ref::<std::io::Error>())
            })
        });
        let handshake = e.kind() == redis::ErrorKind::Io
            && io.is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
        handshake.then_some(
            "the TLS handshake failed: check that ssl_ca_certs names the CA that signed the \
             server's certificate, that the certificate covers the host in the URL, and that the \
             port speaks TLS (ssl_cert_reqs=none skips the certificate check)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_errors() {
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(Fault::of(&io), Fault::Lost);
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Fault::of(&refused), Fault::Lost);
        let wrong = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert_eq!(Fault::of(&wrong), Fault::Command);
        assert_eq!(Fault::refusal(&wrong), None);
        assert_eq!(Fault::refusal(&refused), None);
        let auth = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert!(Fault::refusal(&auth).is_some_and(|h| h.contains("password")));
        let tls = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(Fault::refusal(&tls).is_some_and(|h| h.contains("ssl_ca_certs")));
    }
}

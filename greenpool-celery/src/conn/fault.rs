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
    }
}

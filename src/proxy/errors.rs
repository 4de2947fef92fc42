//! Pingora errors -> usher's outcome classes and the status the client is sent.
//!
//! Pingora answers every upstream failure with 502 by default; an operator wants a timeout to read as
//! 504 (as nginx does), and usher's measurements need to tell a refused connection from a slow one.

use crate::measure::Outcome;
use pingora::{Error, ErrorSource, ErrorType};

/// The outcome class of a request that ended with error `e`.
pub fn outcome_of(e: &Error) -> Outcome {
    use ErrorType::*;
    if let HTTPStatus(code) = e.etype() {
        return Outcome::of_status(*code);
    }
    if local_resource(e) {
        return Outcome::LocalResource;
    }
    match e.esource() {
        ErrorSource::Downstream => match e.etype() {
            InvalidHTTPHeader => Outcome::ClientError,
            _ => Outcome::ClientGone,
        },
        ErrorSource::Upstream | ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                Outcome::Timeout
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | HandshakeError | InvalidCert | SocketError | BindError => {
                Outcome::ConnectFailure
            }
            _ => Outcome::Upstream5xx,
        },
    }
}

/// Whether `e` came from this process running out of descriptors, memory or local ports: the
/// failure of a `socket()` or `connect()` that the upstream never saw. Pingora wraps the OS error
/// in its own errors and sometimes in a detail type, so the whole cause chain is searched.
fn local_resource(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.root_cause());
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return matches!(
                code,
                libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EADDRNOTAVAIL
            );
        }
        cause = c.source();
    }
    false
}

/// The status to answer the client with after error `e`; 0 when the client can no longer be told.
pub fn status_for(e: &Error) -> u16 {
    use ErrorType::*;
    if let HTTPStatus(code) = e.etype() {
        return *code;
    }
    match e.esource() {
        ErrorSource::Upstream | ErrorSource::Internal | ErrorSource::Unset if local_resource(e) => {
            503
        }
        ErrorSource::Upstream => match outcome_of(e) {
            Outcome::Timeout => 504,
            _ => 502,
        },
        ErrorSource::Downstream => match e.etype() {
            ReadError | WriteError | ConnectionClosed => 0,
            ReadTimedout => 408,
            _ => 400,
        },
        ErrorSource::Internal | ErrorSource::Unset => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: ErrorType, s: ErrorSource) -> Box<Error> {
        Error::create(t, s, None, None)
    }

    #[test]
    fn classifies_upstream_failures() {
        use ErrorType::*;
        let up = ErrorSource::Upstream;
        assert_eq!(
            outcome_of(&err(ConnectRefused, up.clone())),
            Outcome::ConnectFailure
        );
        assert_eq!(status_for(&err(ConnectRefused, up.clone())), 502);
        assert_eq!(
            outcome_of(&err(ConnectTimedout, up.clone())),
            Outcome::Timeout
        );
        assert_eq!(status_for(&err(ReadTimedout, up.clone())), 504);
        assert_eq!(
            outcome_of(&err(ConnectionClosed, up.clone())),
            Outcome::Upstream5xx
        );
        assert_eq!(status_for(&err(ConnectionClosed, up)), 502);
    }

    #[test]
    fn classifies_client_failures() {
        use ErrorType::*;
        let down = ErrorSource::Downstream;
        assert_eq!(
            outcome_of(&err(WriteError, down.clone())),
            Outcome::ClientGone
        );
        assert_eq!(status_for(&err(WriteError, down.clone())), 0);
        assert_eq!(
            outcome_of(&err(InvalidHTTPHeader, down.clone())),
            Outcome::ClientError
        );
        assert_eq!(status_for(&err(InvalidHTTPHeader, down)), 400);
        assert_eq!(
            status_for(&err(HTTPStatus(431), ErrorSource::Internal)),
            431
        );
    }

    #[test]
    fn running_out_of_descriptors_is_usher_s_own_failure() {
        use ErrorType::*;
        // As Pingora reports a socket() that failed: InternalError because of the OS error.
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let e = Error::because(InternalError, "Fail to connect to 127.0.0.1:1", emfile);
        assert_eq!(outcome_of(&e), Outcome::LocalResource);
        assert_eq!(status_for(&e), 503);
        // Behind a detail type, as connect() failures are.
        #[derive(Debug)]
        struct Detail(std::io::Error);
        impl std::fmt::Display for Detail {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
        impl std::error::Error for Detail {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::because(
            ConnectError,
            "connect",
            Detail(std::io::Error::from_raw_os_error(libc::ENFILE)),
        )
        .into_up();
        assert_eq!(outcome_of(&e), Outcome::LocalResource);
        assert_eq!(status_for(&e), 503);
        // A refused connection is still the upstream's.
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let e = Error::because(ConnectRefused, "connect", refused).into_up();
        assert_eq!(outcome_of(&e), Outcome::ConnectFailure);
        assert_eq!(status_for(&e), 502);
    }
}

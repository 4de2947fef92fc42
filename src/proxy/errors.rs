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

/// The status to answer the client with after error `e`; 0 when the client can no longer be told.
pub fn status_for(e: &Error) -> u16 {
    use ErrorType::*;
    if let HTTPStatus(code) = e.etype() {
        return *code;
    }
    match e.esource() {
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
}

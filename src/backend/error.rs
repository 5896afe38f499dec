//! Why a backend could not answer a request. The variants say what failed (the server's HTTP
//! status, a timeout, the connection, a malformed reply, a crashed llama-server, the in-process
//! model); each one's message is the sentence the report and `vlmtest serve` show.

use std::time::Duration;

/// A failed generation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The server answered with an error status (`body`: the start of its reply).
    #[error("HTTP {status} from {url}: {body:?}")]
    Http {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    /// No reply within the time left of the model's `timeout_s`.
    #[error("request to {url} timed out after {:.1} s", .after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    /// The request could not be sent, or the connection failed (the innermost cause is shown:
    /// "Connection refused (os error 111)" rather than the HTTP client's layers).
    #[error("request to {url} failed: {}", root_cause(.source))]
    Transport { url: String, source: reqwest::Error },
    /// The reply's body could not be read to its end.
    #[error("reading the reply from {url} failed: {}", error_chain(.source))]
    Reply { url: String, source: reqwest::Error },
    /// The reply is not the JSON of a chat/completions answer.
    #[error("{0}")]
    Protocol(String),
    /// The server answered with an `error` object (its message).
    #[error("the server answered with an error: {0}")]
    Refused(String),
    /// An image of the request could not be prepared for sending.
    #[error("{0}")]
    Image(String),
    /// A failure after retries: the last attempt's error, the number of retries, and, when the
    /// model's `timeout_s` left no time for another, that timeout.
    #[error("{last}{}{}", after_retries(.retries), no_time_left(.timeout))]
    GaveUp {
        #[source]
        last: Box<BackendError>,
        retries: u32,
        timeout: Option<Duration>,
    },
    /// The managed llama-server is not running (it was stopped).
    #[error("llama-server for `{model}` is not running")]
    NotRunning { model: String },
    /// The managed llama-server died again after its one restart (`log_tail`: the last lines of
    /// its log).
    #[error(
        "llama-server for `{model}` died again ({status}) after a restart; last lines of {log}:\n{log_tail}"
    )]
    Crashed {
        model: String,
        status: String,
        log: String,
        log_tail: String,
    },
    /// The managed llama-server exited and could not be started again.
    #[error("{0}")]
    Restart(String),
    /// The request failed on a llama-server started again after it had exited.
    #[error(
        "{source} (after restarting llama-server, which had exited: {status}); last lines of {log}:\n{log_tail}"
    )]
    AfterRestart {
        source: Box<BackendError>,
        status: String,
        log: String,
        log_tail: String,
    },
    /// The in-process model failed (preprocessing, the forward pass, decoding). Boxed: a
    /// candle error is large, and every backend's `Result` would carry its size.
    #[cfg(feature = "candle")]
    #[error(transparent)]
    Model(Box<super::candle::Error>),
}

#[cfg(feature = "candle")]
impl From<super::candle::Error> for BackendError {
    fn from(e: super::candle::Error) -> BackendError {
        BackendError::Model(Box::new(e))
    }
}

impl BackendError {
    /// [`BackendError::Model`], for `map_err`.
    #[cfg(feature = "candle")]
    pub fn model(e: super::candle::Error) -> BackendError {
        e.into()
    }
}

fn after_retries(retries: &u32) -> String {
    if *retries > 0 {
        format!(" (after {retries} retries)")
    } else {
        String::new()
    }
}

fn no_time_left(timeout: &Option<Duration>) -> String {
    match timeout {
        Some(t) => format!(
            "; no time left to retry within timeout_s = {:.0}",
            t.as_secs_f64()
        ),
        None => String::new(),
    }
}

/// The innermost error: "Connection refused (os error 111)" rather than reqwest's layers.
pub(crate) fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(inner) = cur.source() {
        cur = inner;
    }
    cur.to_string()
}

/// Each error of the chain, once.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are the ones users (and tests) saw when these were strings.
    #[test]
    fn messages_keep_their_text() {
        let http = BackendError::Http {
            url: "http://h/v1/chat/completions".into(),
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: "loading".into(),
        };
        assert_eq!(
            http.to_string(),
            "HTTP 503 Service Unavailable from http://h/v1/chat/completions: \"loading\""
        );
        let gave_up = BackendError::GaveUp {
            last: Box::new(http),
            retries: 2,
            timeout: Some(Duration::from_secs(3)),
        };
        assert_eq!(
            gave_up.to_string(),
            "HTTP 503 Service Unavailable from http://h/v1/chat/completions: \"loading\" (after 2 retries); no time left to retry within timeout_s = 3"
        );
        let t = BackendError::Timeout {
            url: "http://h".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(t.to_string(), "request to http://h timed out after 1.5 s");
        let t = BackendError::GaveUp {
            last: Box::new(t),
            retries: 0,
            timeout: None,
        };
        assert_eq!(t.to_string(), "request to http://h timed out after 1.5 s");
    }
}

//! Why a backend could not answer a request. The variants say what failed (the server's HTTP
//! status, a timeout, the connection, a malformed reply, a crashed llama-server, the in-process
//! model); each one's message is the sentence the report and `vlmtest serve` show. A
//! [`LoadError`] says why a model could not be used at all.

use std::path::PathBuf;
use std::sync::Arc;
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
    /// A streamed reply broke off (the connection, or the time left ran out).
    #[error("reading the stream from {url} failed: {source}")]
    Stream {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The reply is not the JSON of a chat/completions answer.
    #[error("{0}")]
    Protocol(String),
    /// The server answered with an `error` object (its message).
    #[error("the server answered with an error: {0}")]
    Refused(String),
    /// An image of the request could not be prepared for sending.
    #[error(transparent)]
    Image(#[from] crate::config::image::ImageError),
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
    #[error(transparent)]
    Restart(Box<LoadError>),
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
    /// The HTTP status `vlmtest serve` answers this failure with: 400 when the request itself
    /// cannot be answered as asked (an image that cannot be decoded or sent, a request the
    /// model refuses), 502 when the server behind it failed or answered nonsense, 503 when the
    /// managed server is down, 504 when it did not answer in time, 500 for a failure of the
    /// in-process model itself.
    pub fn http_status(&self) -> u16 {
        match self {
            BackendError::Image(_) => 400,
            BackendError::Http { .. }
            | BackendError::Transport { .. }
            | BackendError::Reply { .. }
            | BackendError::Stream { .. }
            | BackendError::Protocol(_)
            | BackendError::Refused(_) => 502,
            BackendError::Timeout { .. } => 504,
            BackendError::GaveUp { last, .. } => last.http_status(),
            BackendError::NotRunning { .. }
            | BackendError::Crashed { .. }
            | BackendError::Restart(_) => 503,
            BackendError::AfterRestart { source, .. } => source.http_status(),
            #[cfg(feature = "candle")]
            BackendError::Model(e) => match **e {
                super::candle::Error::Request(_)
                | super::candle::Error::Image { .. }
                | super::candle::Error::ImageFile(_) => 400,
                _ => 500,
            },
        }
    }

    /// [`BackendError::Model`], for `map_err`.
    #[cfg(feature = "candle")]
    pub fn model(e: super::candle::Error) -> BackendError {
        e.into()
    }
}

/// Why a model could not be used. Its trials fail with this message, or are ignored with it
/// when the model is only [unavailable](LoadError::unavailable) here (files not downloaded, a
/// server not started). A model loads once per run and every trial that needs it gets a copy,
/// so the sources are shared (`Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// Not in the Hugging Face cache and not to be downloaded now (`why`: what is missing;
    /// `fix`: how to get it).
    #[error("{why}; {fix}")]
    NotCached { why: String, fix: String },
    /// A download on first use could not start or did not finish.
    #[cfg(feature = "candle")]
    #[error("{why}{}{source}; {fix}", if *.started { ", and downloading it failed: " } else { "; " })]
    Download {
        why: String,
        fix: String,
        /// False when it could not even start (the download lock).
        started: bool,
        #[source]
        source: Arc<super::candle::hub::FetchError>,
    },
    /// What models.toml names does not fit what is on disk (a path that is not a folder, a
    /// missing tokenizer, a dtype the architecture cannot use).
    #[error("model `{model}`: {what}")]
    Invalid { model: String, what: String },
    /// A file models.toml names is not there.
    #[error("`{key}` file {} not found", .path.display())]
    MissingFile { key: &'static str, path: PathBuf },
    /// The checkpoint could not be loaded: its config, tokenizer or weights.
    #[cfg(feature = "candle")]
    #[error("model `{model}`: {source}")]
    Checkpoint {
        model: String,
        #[source]
        source: Arc<super::candle::Error>,
    },
    /// The device models.toml asks for is not usable.
    #[cfg(feature = "candle")]
    #[error(transparent)]
    Device(Arc<super::candle::Error>),
    /// A file the load writes (a server's log) could not be created or opened.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The `port` models.toml gives is taken.
    #[error(
        "port {port} is already in use ({source}); choose another `port` in models.toml, or remove it to let vlmtest pick a free one"
    )]
    PortInUse {
        port: u16,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cannot find a free port: {0}")]
    NoFreePort(#[source] Arc<std::io::Error>),
    /// The llama-server binary is not installed.
    #[error(
        "llama-server binary `{binary}` not found (install llama.cpp, see the README, or set `binary` in models.toml)"
    )]
    ServerMissing { binary: String },
    #[error("cannot start `{command}`: {source}")]
    ServerSpawn {
        command: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The server started but did not become ready (`why`: it exited, or the wait timed out).
    #[error(
        "llama-server for `{model}` {why}\ncommand: {command}\nlast lines of {log}:\n{log_tail}"
    )]
    ServerNotReady {
        model: String,
        why: String,
        command: String,
        log: String,
        log_tail: String,
    },
    #[error("the API key variable `{var}` (api_key_env in models.toml) is not set")]
    NoApiKey { var: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] Arc<reqwest::Error>),
    /// An OpenAI-compatible server that does not answer.
    #[error(
        "the server at {url} is not reachable ({}): start it, or set VLMTEST_REQUIRE_MODELS=1 to make this a failure",
        root_cause(.source.as_ref())
    )]
    Unreachable {
        url: String,
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// A loader panicked (a checkpoint whose values break an assumption of the code).
    #[error(
        "loading model `{model}` panicked: {message} (a bug in vlmtest or a checkpoint it does not check yet: please report it)"
    )]
    Panicked { model: String, message: String },
    /// An in-process model in a build without the `candle` feature.
    #[error("model `{model}`: {}", crate::kinds::NO_CANDLE)]
    NoCandle { model: String },
}

impl LoadError {
    /// Whether the model is only unavailable here (its trials are ignored with the reason, or
    /// fail under `VLMTEST_REQUIRE_MODELS=1`) rather than broken.
    pub fn unavailable(&self) -> bool {
        match self {
            LoadError::NotCached { .. }
            | LoadError::ServerMissing { .. }
            | LoadError::Unreachable { .. } => true,
            #[cfg(feature = "candle")]
            LoadError::Download { .. } => true,
            _ => false,
        }
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

    /// Load errors read as the sentences they were when they were strings, and only the
    /// "not here" kinds make a model unavailable (ignored trials) rather than failed.
    #[test]
    fn load_errors_keep_their_text_and_kind() {
        let not_cached = LoadError::NotCached {
            why: "org/m@main is not in the Hugging Face cache".into(),
            fix: "fetch it with `vlmtest fetch m`".into(),
        };
        assert_eq!(
            not_cached.to_string(),
            "org/m@main is not in the Hugging Face cache; fetch it with `vlmtest fetch m`"
        );
        assert!(not_cached.unavailable());
        let missing = LoadError::ServerMissing {
            binary: "llama-server".into(),
        };
        assert!(missing.unavailable());
        assert_eq!(
            missing.to_string(),
            "llama-server binary `llama-server` not found (install llama.cpp, see the README, or set `binary` in models.toml)"
        );
        let not_ready = LoadError::ServerNotReady {
            model: "m".into(),
            why: "exited (exit status: 1) before it was ready".into(),
            command: "llama-server -m x.gguf".into(),
            log: "out/logs/m.log".into(),
            log_tail: "error: bad file".into(),
        };
        assert!(!not_ready.unavailable());
        assert_eq!(
            not_ready.to_string(),
            "llama-server for `m` exited (exit status: 1) before it was ready\ncommand: llama-server -m x.gguf\nlast lines of out/logs/m.log:\nerror: bad file"
        );
        let io = LoadError::Io {
            action: "create",
            path: "out/logs".into(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(!io.unavailable());
        assert!(io.to_string().starts_with("cannot create out/logs: "));
        use std::error::Error as _;
        assert!(io.source().is_some(), "the io error is kept as the source");
        let restart = BackendError::Restart(Box::new(not_ready));
        assert_eq!(restart.http_status(), 503);
        assert!(
            restart
                .to_string()
                .starts_with("llama-server for `m` exited")
        );
    }
}

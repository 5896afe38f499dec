//! `vlmtest serve MODEL [--port P]`: one model of models.toml behind an OpenAI-compatible HTTP
//! server on 127.0.0.1, so that the processes of a cargo-nextest run (one process per test) and
//! any other tool share one loaded model instead of each loading the weights.
//!
//! - `POST /v1/chat/completions`: `messages` with `system` / `user` / `assistant` roles, content
//!   as a string or as `text` and `image_url` parts, images as base64 `data:` URLs (decoded into
//!   the same [`Image`] the runner reads from suites); `max_tokens` (or `max_completion_tokens`),
//!   `temperature` (0: greedy; above: sampled), `seed`. The reply has
//!   `choices[0].message.content`, `usage` and `model`. Parameters left out take the model's
//!   values from models.toml, its `system_prompt` included when the request has no system
//!   message.
//! - `GET /v1/models` lists the model; `GET /health` answers 200 once it is loaded (503 while it
//!   loads, like llama.cpp's server, so clients that retry 503 simply wait).
//! - A request that cannot be honoured exactly (streaming, `n` > 1, `stop`, `top_p`, tools, an
//!   image by `http` URL…) gets 400 and a JSON error naming the field, never a silently different
//!   answer; a `model` other than the served one gets 404.
//! - A request the model fails is answered with the status that says whose fault it is
//!   ([`crate::backend::BackendError::http_status`]): 400 for an image or request the model
//!   cannot take, 502 when the server behind a proxied model fails or answers nonsense, 503 when
//!   a managed llama-server is down, 504 when it does not answer within `timeout_s`, 500 for a
//!   failure of the in-process model itself.
//! - The model is loaded once, at start; requests are answered one at a time for an in-process
//!   model (it is not re-entrant), up to `concurrency` for the HTTP backends.
//!
//! `--nextest` is the setup-script mode: it starts one detached `vlmtest serve` per model, waits
//! until each answers, writes `VLMTEST_SERVED=NAME=URL,...` into `$NEXTEST_ENV` (the test
//! processes then ask the servers: see [`crate::config::served`]) and exits; each server stops
//! when the nextest run (the script's parent process) ends.
//!
//! Within a message, images come before the text, as vlmtest sends them and as the chat
//! templates receive them; the order of parts within one message is not kept, and several text
//! parts are joined with a newline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::backend::{Backend, Generation, Message, ModelSlot, Request, Role, Semaphore};
use crate::config::image::Image;
use crate::config::{BackendSpec, Env, GenParams, ModelSource, ModelSpec};

/// `vlmtest serve` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The model to serve, by its name in models.toml (VLMTEST_MODELS). With --nextest: the
    /// models to serve (default: every enabled in-process model).
    #[arg(value_name = "MODEL")]
    pub models: Vec<String>,
    /// Port on 127.0.0.1; 0 picks a free one (see --ready-file).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Once the model is loaded, write the server's base URL (http://127.0.0.1:PORT/v1) to FILE.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Stop when the process PID exits (with --nextest: default, the test runner).
    #[arg(long, value_name = "PID")]
    pub exit_with: Option<u32>,
    /// cargo-nextest setup-script mode: start a server per model in the background, write
    /// VLMTEST_SERVED into $NEXTEST_ENV, and exit; the servers stop when the run ends.
    #[arg(long)]
    pub nextest: bool,
    /// With --nextest: how long each model may take to load, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub startup_timeout: u64,
}

/// Largest request body accepted (images travel inside it, base64-encoded).
const MAX_BODY: usize = 64 << 20;
/// Longest request line or header line.
const MAX_LINE: usize = 16 << 10;
const MAX_HEADERS: usize = 100;
/// Connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(120);

/// An error answered to the client: its HTTP status and an OpenAI-style error object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    /// The request field at fault (`messages[1].content[0].image_url.url`), when there is one.
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    fn bad(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            param: param.map(str::to_string),
            message: message.into(),
        }
    }

    fn status(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            param: None,
            message: message.into(),
        }
    }

    /// The body: `{"error": {"message", "type", "param", "code"}}`, as OpenAI answers.
    pub(crate) fn body(&self) -> Value {
        let kind = match self.status {
            400 | 405 | 411 | 413 => "invalid_request_error",
            404 => "not_found_error",
            503 => "unavailable_error",
            _ => "server_error",
        };
        let message = match &self.param {
            Some(p) => format!("{p}: {}", self.message),
            None => self.message.clone(),
        };
        json!({"error": {"message": message, "type": kind, "param": self.param, "code": null}})
    }
}

// ---------------------------------------------------------------------------------------------
// The request: JSON in, a backend Request out.

fn field_is_set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

/// A number field that must equal `neutral` when given (we cannot honour anything else).
fn neutral_number(obj: &Map<String, Value>, key: &str, neutral: f64) -> Result<(), ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_f64() == Some(neutral) => Ok(()),
        Some(_) => Err(ApiError::bad(
            Some(key),
            format!("is not supported (leave it out, or set it to {neutral})"),
        )),
    }
}

/// Reads a chat/completions request for model `model` into the backend's request; parameters
/// left out take `defaults` (the model's models.toml values).
pub(crate) fn parse_chat(
    body: &[u8],
    model: &str,
    defaults: &GenParams,
) -> Result<Request, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            None,
            format!("the body is not JSON: {e} (expected a chat/completions request object)"),
        )
    })?;
    let Value::Object(obj) = v else {
        return Err(ApiError::bad(
            None,
            "the body is not a JSON object (expected {\"messages\": [...], ...})",
        ));
    };
    match obj.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == model => {}
        Some(Value::String(m)) => {
            return Err(ApiError {
                status: 404,
                param: Some("model".into()),
                message: format!("model `{m}` is not served here (this server serves `{model}`)"),
            });
        }
        Some(_) => return Err(ApiError::bad(Some("model"), "must be a string")),
    }
    match obj.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(ApiError::bad(
                Some("stream"),
                "streaming is not supported (send \"stream\": false)",
            ));
        }
        Some(_) => return Err(ApiError::bad(Some("stream"), "must be true or false")),
    }
    neutral_number(&obj, "n", 1.0)?;
    neutral_number(&obj, "top_p", 1.0)?;
    neutral_number(&obj, "frequency_penalty", 0.0)?;
    neutral_number(&obj, "presence_penalty", 0.0)?;
    for key in [
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "response_format",
        "logit_bias",
        "top_logprobs",
    ] {
        if field_is_set(obj.get(key)) {
            return Err(ApiError::bad(
                Some(key),
                "is not supported by vlmtest serve",
            ));
        }
    }
    match obj.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(ApiError::bad(
                Some("stop"),
                "is not supported (answers end at the model's end-of-sequence tokens or max_tokens)",
            ));
        }
    }
    if matches!(obj.get("logprobs"), Some(Value::Bool(true))) {
        return Err(ApiError::bad(Some("logprobs"), "is not supported"));
    }

    let mut params = defaults.clone();
    for key in ["max_tokens", "max_completion_tokens"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= u64::from(u32::MAX) => params.max_new_tokens = n as u32,
                _ => {
                    return Err(ApiError::bad(
                        Some(key),
                        format!("must be a whole number >= 1, got {v}"),
                    ));
                }
            },
        }
    }
    match obj.get("temperature") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=5.0).contains(&t) => params.temperature = t,
            _ => {
                return Err(ApiError::bad(
                    Some("temperature"),
                    format!("must be a number from 0 (greedy) to 5, got {v}"),
                ));
            }
        },
    }
    match obj.get("seed") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_u64() {
            Some(s) => params.seed = Some(s),
            None => {
                return Err(ApiError::bad(
                    Some("seed"),
                    format!("must be a whole number >= 0, got {v}"),
                ));
            }
        },
    }

    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad(
                Some("messages"),
                "is empty (expected at least one message)",
            ));
        }
        None | Some(Value::Null) => {
            return Err(ApiError::bad(
                Some("messages"),
                "is missing (expected a list of {\"role\", \"content\"} objects)",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad(
                Some("messages"),
                "must be a list of {\"role\", \"content\"} objects",
            ));
        }
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        out.push(parse_message(m, i)?);
    }
    // A leading system message is the system prompt, as vlmtest's own client sends it; a
    // request without one takes the model's.
    if let Some(first) = out.first()
        && first.role == Role::System
    {
        params.system_prompt = Some(out.remove(0).text);
    }
    if out.is_empty() {
        return Err(ApiError::bad(
            Some("messages"),
            "has only a system message (expected a user message after it)",
        ));
    }
    Ok(Request {
        messages: out,
        params,
    })
}

fn parse_message(m: &Value, i: usize) -> Result<Message, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = m else {
        return Err(ApiError::bad(
            Some(&at),
            "must be an object with `role` and `content`",
        ));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") | Some("developer") => Role::System,
        Some(other) => {
            return Err(ApiError::bad(
                Some(&format!("{at}.role")),
                format!("unsupported role `{other}` (expected system, user or assistant)"),
            ));
        }
        None => {
            return Err(ApiError::bad(
                Some(&format!("{at}.role")),
                "is missing or not a string (expected system, user or assistant)",
            ));
        }
    };
    let mut texts: Vec<String> = Vec::new();
    let mut images: Vec<Arc<Image>> = Vec::new();
    match m.get("content") {
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => texts.push(t.clone()),
                        _ => {
                            return Err(ApiError::bad(
                                Some(&format!("{at}.text")),
                                "is missing or not a string",
                            ));
                        }
                    },
                    Some("image_url") => {
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(Value::Object(o)) => match o.get("url") {
                                Some(Value::String(u)) => u.as_str(),
                                _ => {
                                    return Err(ApiError::bad(
                                        Some(&format!("{at}.image_url.url")),
                                        "is missing or not a string",
                                    ));
                                }
                            },
                            _ => {
                                return Err(ApiError::bad(
                                    Some(&format!("{at}.image_url")),
                                    "is missing (expected {\"url\": \"data:image/png;base64,...\"})",
                                ));
                            }
                        };
                        if role != Role::User {
                            return Err(ApiError::bad(
                                Some(&at),
                                format!(
                                    "an image in a `{}` message (images are accepted in user messages only)",
                                    role.as_str()
                                ),
                            ));
                        }
                        images.push(decode_data_url(url, &format!("{at}.image_url.url"))?);
                    }
                    Some(other) => {
                        return Err(ApiError::bad(
                            Some(&format!("{at}.type")),
                            format!(
                                "unsupported content part `{other}` (expected text or image_url)"
                            ),
                        ));
                    }
                    None => {
                        return Err(ApiError::bad(
                            Some(&format!("{at}.type")),
                            "is missing (expected text or image_url)",
                        ));
                    }
                }
            }
        }
        Some(Value::Null) | None => {
            return Err(ApiError::bad(
                Some(&format!("{at}.content")),
                "is missing (expected a string or a list of text and image_url parts)",
            ));
        }
        Some(_) => {
            return Err(ApiError::bad(
                Some(&format!("{at}.content")),
                "must be a string or a list of text and image_url parts",
            ));
        }
    }
    Ok(Message {
        role,
        text: texts.join("\n"),
        images,
    })
}

/// Decodes a `data:image/...;base64,...` URL into an image; `at` names the field in errors.
pub(crate) fn decode_data_url(url: &str, at: &str) -> Result<Arc<Image>, ApiError> {
    use base64::Engine;
    let bad = |why: String| ApiError::bad(Some(at), why);
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(bad(
            "only data: URLs are accepted (this server fetches nothing): send the image as data:image/png;base64,...".into(),
        ));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        let start: String = url.chars().take(30).collect();
        return Err(bad(format!(
            "`{start}` is not a data: URL (expected data:image/png;base64,...)"
        )));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(bad(
            "a data: URL without a comma (expected data:image/png;base64,...)".into(),
        ));
    };
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(bad(format!(
            "`data:{meta},` is not base64 (expected data:image/png;base64,...)"
        )));
    };
    if !(mime.is_empty() || mime.starts_with("image/")) {
        return Err(bad(format!(
            "media type `{mime}` is not an image (expected image/png, image/jpeg, ...)"
        )));
    }
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(&compact)
        .map_err(|e| bad(format!("invalid base64: {e}")))?;
    Image::from_bytes(bytes, format!("the image in {at}"))
        .map(Arc::new)
        .map_err(|e| bad(e.to_string()))
}

/// The chat/completions reply for a generation.
pub(crate) fn completion_body(model: &str, id: u64, g: &Generation, max_tokens: u32) -> Value {
    let finish = match g.completion_tokens {
        Some(n) if n >= u64::from(max_tokens) => "length",
        _ => "stop",
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut body = json!({
        "id": format!("chatcmpl-vlmtest-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "finish_reason": finish,
        }],
    });
    if let (Some(p), Some(c)) = (g.prompt_tokens, g.completion_tokens) {
        body["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    }
    body
}

// ---------------------------------------------------------------------------------------------
// The server.

struct Ready {
    backend: Arc<dyn Backend>,
    /// Requests answered at once: 1 for an in-process model, `concurrency` for HTTP backends.
    permits: Semaphore,
    /// Holds the model (a managed llama-server lives as long as its slot).
    _slot: ModelSlot,
}

struct Shared {
    name: String,
    defaults: GenParams,
    ready: OnceLock<Ready>,
    next_id: AtomicU64,
    connections: AtomicUsize,
}

/// What the router answers.
struct Response {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    fn json(status: u16, body: Value) -> Response {
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn error(e: &ApiError) -> Response {
        Response::json(e.status, e.body())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn write_response(w: &mut impl Write, r: &Response, close: bool) -> std::io::Result<()> {
    let body = r.body.to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        r.status,
        reason(r.status),
        body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

/// A request as read off the wire.
struct HttpRequest {
    method: String,
    path: String,
    /// The client asked to close the connection after this request (or speaks HTTP/1.0).
    close: bool,
    body: Vec<u8>,
}

enum ReadError {
    /// The peer closed the connection, or it stayed idle too long: nothing to answer.
    Gone,
    /// A malformed request: answered, then the connection is closed.
    Bad(ApiError),
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Gone
    }
}

/// One line without its CRLF; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(ReadError::Bad(ApiError::bad(
            None,
            format!("a request or header line longer than {MAX_LINE} bytes"),
        )));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ReadError::Bad(ApiError::bad(None, "a request line that is not UTF-8")))
}

fn too_large() -> ReadError {
    ReadError::Bad(ApiError::status(
        413,
        format!("the request body is larger than {} MiB", MAX_BODY >> 20),
    ))
}

/// Reads a chunked body (`Transfer-Encoding: chunked`).
fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or(ReadError::Gone)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| {
            ReadError::Bad(ApiError::bad(
                None,
                format!("bad chunk size `{size}` in a chunked body"),
            ))
        })?;
        if size == 0 {
            // Trailers, up to the empty line.
            while read_line(r)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(too_large());
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

/// Reads the next request of a connection.
fn read_request(r: &mut impl BufRead, w: &mut impl Write) -> Result<HttpRequest, ReadError> {
    // Blank lines between requests are allowed (RFC 9112 §2.2).
    let line = loop {
        match read_line(r)? {
            None => return Err(ReadError::Gone),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(ApiError::bad(
            None,
            format!("malformed request line `{line}` (expected METHOD PATH HTTP/1.1)"),
        )));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(ApiError::bad(
            None,
            format!("unsupported protocol `{version}` (expected HTTP/1.1)"),
        )));
    }
    let mut close = version == "HTTP/1.0";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut count = 0;
    loop {
        let Some(h) = read_line(r)? else {
            return Err(ReadError::Gone);
        };
        if h.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(ReadError::Bad(ApiError::bad(
                None,
                format!("more than {MAX_HEADERS} headers"),
            )));
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(ReadError::Bad(ApiError::bad(
                None,
                format!("malformed header line `{h}`"),
            )));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => match v.parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => {
                    return Err(ReadError::Bad(ApiError::bad(
                        None,
                        format!("bad Content-Length `{v}`"),
                    )));
                }
            },
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            }
            "expect" => expect_continue = v.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if length.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    if expect_continue && (chunked || length.is_some_and(|n| n > 0)) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    let body = if chunked {
        read_chunked(r)?
    } else {
        let mut body = vec![0u8; length.unwrap_or(0)];
        r.read_exact(&mut body)?;
        body
    };
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(HttpRequest {
        method: method.to_string(),
        path,
        close,
        body,
    })
}

impl Shared {
    fn route(&self, req: &HttpRequest) -> Response {
        let path = req.path.trim_end_matches('/');
        let allowed = match path {
            "/health" | "/v1/models" => "GET",
            "/v1/chat/completions" => "POST",
            _ => {
                return Response::error(&ApiError::status(
                    404,
                    format!(
                        "no route {} {} (this server answers GET /health, GET /v1/models and POST /v1/chat/completions)",
                        req.method, req.path
                    ),
                ));
            }
        };
        if req.method != allowed {
            let mut r = Response::error(&ApiError::status(
                405,
                format!("{} {} is not allowed (use {allowed})", req.method, req.path),
            ));
            r.headers.push(("allow", allowed.to_string()));
            return r;
        }
        match path {
            "/health" => match self.ready.get() {
                Some(_) => Response::json(200, json!({"status": "ok", "model": self.name})),
                None => loading(json!({"status": "loading", "model": self.name})),
            },
            "/v1/models" => Response::json(
                200,
                json!({"object": "list", "data": [{
                    "id": self.name, "object": "model", "created": 0, "owned_by": "vlmtest"
                }]}),
            ),
            _ => match self.chat(&req.body) {
                Ok(body) => Response::json(200, body),
                Err(e) if e.status == 503 => loading(e.body()),
                Err(e) => Response::error(&e),
            },
        }
    }

    fn chat(&self, body: &[u8]) -> Result<Value, ApiError> {
        let request = parse_chat(body, &self.name, &self.defaults)?;
        let Some(ready) = self.ready.get() else {
            return Err(ApiError::status(
                503,
                format!("model `{}` is still loading", self.name),
            ));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let generation = {
            let _permit = ready.permits.acquire();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ready.backend.generate(&request)
            }))
        };
        let g = match generation {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                tracing::warn!(model = %self.name, "request {id} failed: {e}");
                return Err(ApiError::status(
                    e.http_status(),
                    format!("model `{}` could not answer: {e}", self.name),
                ));
            }
            Err(payload) => {
                let what = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                tracing::error!(model = %self.name, "request {id} panicked: {what}");
                return Err(ApiError::status(
                    500,
                    format!(
                        "model `{}` panicked while answering: {what} (a bug in vlmtest: please report it)",
                        self.name
                    ),
                ));
            }
        };
        tracing::info!(
            model = %self.name,
            ms = start.elapsed().as_millis() as u64,
            tokens = g.completion_tokens,
            "request {id} answered"
        );
        Ok(completion_body(
            &self.name,
            id,
            &g,
            request.params.max_new_tokens,
        ))
    }
}

fn loading(body: Value) -> Response {
    let mut r = Response::json(503, body);
    r.headers.push(("retry-after", "1".to_string()));
    r
}

fn handle_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let req = match read_request(&mut reader, &mut writer) {
            Ok(r) => r,
            Err(ReadError::Gone) => return,
            Err(ReadError::Bad(e)) => {
                tracing::info!("bad request: {}", e.message);
                let _ = write_response(&mut writer, &Response::error(&e), true);
                return;
            }
        };
        let response = shared.route(&req);
        if write_response(&mut writer, &response, req.close).is_err() || req.close {
            return;
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let busy = ApiError::status(
                503,
                format!("more than {MAX_CONNECTIONS} connections at once"),
            );
            let _ = write_response(&mut stream, &Response::error(&busy), true);
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vlmtest-serve-conn".into())
            .spawn(move || {
                handle_connection(stream, &s);
                s.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command.

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The model in words, for the start-up line.
fn describe(spec: &ModelSpec) -> String {
    match &spec.backend {
        BackendSpec::Candle(c) => {
            let from = match &c.source {
                ModelSource::Path(p) => p.display().to_string(),
                ModelSource::Hub { repo, revision } => format!("{repo}@{revision}"),
            };
            format!(
                "in-process {} from {from}, {}, {}",
                c.arch, c.dtype, c.device
            )
        }
        BackendSpec::OpenAi(o) => format!("openai at {}", o.base_url),
        BackendSpec::LlamaServer(_) => "managed llama-server".to_string(),
    }
}

/// Reads models.toml (VLMTEST_MODELS) as a run would, without `VLMTEST_SERVED`: a server never
/// forwards to another.
fn load_models(
    env: Result<Env, crate::error::ConfigError>,
) -> Result<(Env, crate::config::ModelsConfig), ExitCode> {
    let env = env.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let models = crate::config::models::load_models(&env.models).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    Ok((env, models))
}

fn model_names(models: &crate::config::ModelsConfig) -> String {
    models
        .models
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vlmtest serve`.
pub(crate) fn main(args: ServeArgs) -> ExitCode {
    init_logging();
    if args.nextest {
        return nextest_setup(&args);
    }
    let (env, models) = match load_models(Env::from_process()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let name = match args.models.as_slice() {
        [one] => one.clone(),
        _ => {
            eprintln!(
                "error: name one model of {} to serve (models: {})",
                env.models.display(),
                model_names(&models)
            );
            return ExitCode::from(2);
        }
    };
    let Some(spec) = models.models.iter().find(|m| m.name == name).cloned() else {
        eprintln!(
            "error: no model `{name}` in {} (models: {})",
            env.models.display(),
            model_names(&models)
        );
        return ExitCode::from(2);
    };
    let listener = match TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on 127.0.0.1:{}: {e} (another server on that port? --port 0 picks a free one)",
                args.port
            );
            return ExitCode::FAILURE;
        }
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let in_process = spec.backend.kind().in_process();
    let default_alloc = if in_process {
        crate::machine::Allocator::Tuned
    } else {
        crate::machine::Allocator::Default
    };
    env.malloc.unwrap_or(default_alloc).apply();

    let shared = Arc::new(Shared {
        name: name.clone(),
        defaults: spec.params.clone(),
        ready: OnceLock::new(),
        next_id: AtomicU64::new(1),
        connections: AtomicUsize::new(0),
    });
    // Answers from the start: 503 "loading" until the model is ready.
    let accepting = {
        let shared = shared.clone();
        std::thread::spawn(move || accept_loop(listener, shared))
    };
    let ready_file = args.ready_file.clone();
    crate::interrupt::on_interrupt(crate::interrupt::WRITE_REPORT, move || {
        if let Some(f) = &ready_file {
            let _ = std::fs::remove_file(f);
        }
        eprintln!("vlmtest serve: stopped");
    });
    if let Some(pid) = args.exit_with {
        watch_process(pid);
    }

    eprintln!(
        "vlmtest serve: loading model `{name}` ({})…",
        describe(&spec)
    );
    let permits = match &spec.backend {
        BackendSpec::Candle(_) => 1,
        BackendSpec::OpenAi(o) => o.concurrency,
        BackendSpec::LlamaServer(l) => l.concurrency,
    };
    let slot = ModelSlot::new(spec, Arc::new(Semaphore::new(1)), &env.out);
    let backend = match slot.get() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("error: model `{name}` cannot be served: {why}");
            return ExitCode::FAILURE;
        }
    };
    let load_s = slot.stats().load_s.unwrap_or(0.0);
    let _ = shared.ready.set(Ready {
        backend,
        permits: Semaphore::new(permits),
        _slot: slot,
    });
    eprintln!(
        "vlmtest serve: `{name}` loaded in {load_s:.2} s; serving {base_url} (POST /v1/chat/completions, GET /v1/models, GET /health); Ctrl-C stops"
    );
    if let Some(f) = &args.ready_file
        && let Err(e) = write_atomically(f, &base_url)
    {
        eprintln!("error: cannot write {}: {e}", f.display());
        return ExitCode::FAILURE;
    }
    if accepting.join().is_err() {
        eprintln!("error: the server thread stopped");
    }
    ExitCode::FAILURE
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Whether process `pid` still exists.
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; no memory is involved.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Stops this server (as Ctrl-C does: hooks run, managed servers are stopped) once `pid` exits.
fn watch_process(pid: u32) {
    #[cfg(unix)]
    std::thread::spawn(move || {
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("vlmtest serve: process {pid} exited; stopping");
        // SAFETY: raise(3) sends a signal to this process; the handler installed by
        // crate::interrupt stops it the way Ctrl-C does.
        unsafe {
            libc::raise(libc::SIGTERM);
        }
    });
    #[cfg(not(unix))]
    {
        let _ = pid;
        tracing::warn!("--exit-with is only supported on Unix");
    }
}

#[cfg(unix)]
fn parent_pid() -> u32 {
    // SAFETY: getppid(2) has no preconditions.
    unsafe { libc::getppid() as u32 }
}

#[cfg(not(unix))]
fn parent_pid() -> u32 {
    0
}

/// `vlmtest serve --nextest`: a cargo-nextest setup script.
fn nextest_setup(args: &ServeArgs) -> ExitCode {
    let Some(env_file) = std::env::var_os("NEXTEST_ENV").map(PathBuf::from) else {
        eprintln!(
            "error: --nextest is for a cargo-nextest setup script (NEXTEST_ENV is not set); run `vlmtest serve MODEL` to serve a model yourself"
        );
        return ExitCode::from(2);
    };
    // nextest gives a setup script no CARGO_MANIFEST_DIR, and one inherited from elsewhere (a
    // `cargo test` that runs nextest, say) names another folder, such as the one an archive was
    // built in: the crate root is the workspace root nextest runs in (`--workspace-remap`'s).
    let env = Env::from_vars(|k| match k {
        "CARGO_MANIFEST_DIR" => std::env::var("NEXTEST_WORKSPACE_ROOT")
            .or_else(|_| std::env::var(k))
            .ok(),
        _ => std::env::var(k).ok(),
    });
    let (env, models) = match load_models(env) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let mut names: Vec<String> = Vec::new();
    for n in &args.models {
        if !models.models.iter().any(|m| &m.name == n) {
            eprintln!(
                "error: no model `{n}` in {} (models: {})",
                env.models.display(),
                model_names(&models)
            );
            return ExitCode::from(2);
        }
        names.push(n.clone());
    }
    if args.models.is_empty() {
        names = models
            .models
            .iter()
            .filter(|m| m.enabled && m.backend.kind().in_process())
            .map(|m| m.name.clone())
            .collect();
    }
    // Models someone already serves stay as they are.
    names.retain(|n| !env.served.iter().any(|s| &s.model == n));
    if names.is_empty() {
        eprintln!(
            "vlmtest serve: no in-process model to serve in {}",
            env.models.display()
        );
        return ExitCode::SUCCESS;
    }
    let watch = args.exit_with.unwrap_or_else(parent_pid);
    let logs = env.out.join("logs");
    if let Err(e) = std::fs::create_dir_all(&logs) {
        eprintln!("error: cannot create {}: {e}", logs.display());
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find the vlmtest executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A model that cannot be served (weights missing, a load error) stays in-process: each of
    // its tests then loads it, or reports it ignored or failed with the reason, as in any run.
    let not_served = |name: &str, why: &str| {
        eprintln!(
            "vlmtest serve: `{name}` is not served ({why}); its tests will load it themselves"
        )
    };
    let mut started: Vec<Started> = Vec::new();
    for name in &names {
        match start_detached(&exe, name, &env.root, &logs, watch) {
            Ok(s) => started.push(s),
            Err(e) => not_served(name, &e),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.startup_timeout);
    let mut entries: Vec<String> = env
        .served
        .iter()
        .map(|s| format!("{}={}", s.model, s.base_url))
        .collect();
    let mut serving = Vec::new();
    for mut s in started {
        match s.wait_ready(deadline) {
            Ok(url) => {
                eprintln!(
                    "vlmtest serve: `{}` served at {url} for this nextest run (pid {}, log {})",
                    s.name,
                    s.child.id(),
                    s.log.display()
                );
                entries.push(format!("{}={url}", s.name));
                serving.push(s);
            }
            Err(e) => {
                not_served(&s.name, &e);
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
        }
    }
    if entries.is_empty() {
        return ExitCode::SUCCESS;
    }
    let line = format!("VLMTEST_SERVED={}\n", entries.join(","));
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&env_file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", env_file.display());
        for mut s in serving {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// A server started by the setup mode.
struct Started {
    name: String,
    child: std::process::Child,
    ready: PathBuf,
    log: PathBuf,
}

fn start_detached(
    exe: &Path,
    name: &str,
    root: &Path,
    logs: &Path,
    watch: u32,
) -> Result<Started, String> {
    let ready = logs.join(format!("serve-{name}.ready"));
    let log = logs.join(format!("serve-{name}.log"));
    let _ = std::fs::remove_file(&ready);
    let out =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .arg(name)
        .args(["--port", "0", "--exit-with", &watch.to_string()])
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("NEXTEST_ENV")
        .env("CARGO_MANIFEST_DIR", root)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // A process group of its own: signals meant for the setup script's group (or the
    // terminal's) do not reach it; it stops when the run ends (--exit-with).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {} serve {name}: {e}", exe.display()))?;
    Ok(Started {
        name: name.to_string(),
        child,
        ready,
        log,
    })
}

impl Started {
    /// Waits for the server's ready file; its base URL.
    fn wait_ready(&mut self, deadline: Instant) -> Result<String, String> {
        loop {
            if let Ok(url) = std::fs::read_to_string(&self.ready) {
                return Ok(url.trim().to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "`vlmtest serve {}` exited ({status}) before it was ready; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    crate::backend::llama_server::log_tail(&self.log, 20)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "`vlmtest serve {}` was not ready within --startup-timeout; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    crate::backend::llama_server::log_tail(&self.log, 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> GenParams {
        GenParams {
            max_new_tokens: 8,
            temperature: 0.0,
            seed: None,
            system_prompt: Some("be brief".into()),
        }
    }

    fn png_data_url() -> String {
        use base64::Engine;
        let mut png = Vec::new();
        image::RgbImage::from_pixel(3, 2, image::Rgb([200, 10, 10]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        )
    }

    fn parse(body: Value) -> Result<Request, ApiError> {
        parse_chat(body.to_string().as_bytes(), "m", &defaults())
    }

    #[test]
    fn a_request_becomes_the_runner_s_request() {
        let url = png_data_url();
        let r = parse(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is it?"}
                ]},
                {"role": "assistant", "content": "a square"},
                {"role": "user", "content": "Which colour?"}
            ],
            "max_tokens": 5, "temperature": 0.7, "seed": 42, "stream": false
        }))
        .unwrap();
        assert_eq!(r.params.max_new_tokens, 5);
        assert_eq!(r.params.temperature, 0.7);
        assert_eq!(r.params.seed, Some(42));
        assert_eq!(r.params.system_prompt.as_deref(), Some("sys"));
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[0].role, Role::User);
        assert_eq!(r.messages[0].text, "What is it?");
        let img = &r.messages[0].images[0];
        assert_eq!((img.width, img.height, img.mime), (3, 2, "image/png"));
        let decoded = image::load_from_memory(&img.bytes().unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(decoded.get_pixel(2, 1).0, [200, 10, 10]);
        assert_eq!(r.messages[1].role, Role::Assistant);
        assert_eq!(r.messages[2].text, "Which colour?");

        // Left out: the model's own settings, its system prompt included.
        let r = parse(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(r.params, defaults());
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let url = png_data_url();
        let cases: Vec<(Value, u16, &str)> = vec![
            (json!([1]), 400, "not a JSON object"),
            (json!({}), 400, "messages: is missing"),
            (json!({"messages": []}), 400, "messages: is empty"),
            (
                json!({"model": "other", "messages": [{"role": "user", "content": "x"}]}),
                404,
                "model `other` is not served here (this server serves `m`)",
            ),
            (
                json!({"stream": true, "messages": [{"role": "user", "content": "x"}]}),
                400,
                "stream: streaming is not supported",
            ),
            (
                json!({"n": 2, "messages": [{"role": "user", "content": "x"}]}),
                400,
                "n: is not supported",
            ),
            (
                json!({"stop": ["\n"], "messages": [{"role": "user", "content": "x"}]}),
                400,
                "stop: is not supported",
            ),
            (
                json!({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
                400,
                "max_tokens: must be a whole number >= 1, got 0",
            ),
            (
                json!({"temperature": -1, "messages": [{"role": "user", "content": "x"}]}),
                400,
                "temperature: must be a number from 0",
            ),
            (
                json!({"seed": -3, "messages": [{"role": "user", "content": "x"}]}),
                400,
                "seed: must be a whole number >= 0",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                400,
                "messages[0].role: unsupported role `tool`",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                400,
                "messages[0].content: is missing",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                400,
                "messages[0].content[0].type: unsupported content part `audio`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                400,
                "messages[0].content[0].image_url.url: only data: URLs are accepted",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}]}),
                400,
                "messages[0].content[0].image_url.url: invalid base64",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}),
                400,
                "cannot be decoded",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}]}]}),
                400,
                "media type `text/plain` is not an image",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}),
                400,
                "images are accepted in user messages only",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                400,
                "has only a system message",
            ),
        ];
        for (body, status, needle) in cases {
            let e = parse(body.clone()).unwrap_err();
            let msg = e.body()["error"]["message"].as_str().unwrap().to_string();
            assert_eq!(e.status, status, "{body}: {msg}");
            assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
        }
        let e = parse_chat(b"{not json", "m", &defaults()).unwrap_err();
        assert!(e.message.contains("not JSON"), "{}", e.message);
    }

    #[test]
    fn http_requests_are_read_with_keep_alive_chunks_and_100_continue() {
        let wire = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody\
GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\n\r\n";
        let mut r = BufReader::new(&wire[..]);
        let mut w = Vec::new();
        let a = read_request(&mut r, &mut w).ok().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(a.body, b"body");
        assert!(!a.close);
        assert_eq!(w, b"HTTP/1.1 100 Continue\r\n\r\n");
        let b = read_request(&mut r, &mut w).ok().unwrap();
        assert_eq!(b.body, b"abcde");
        assert!(b.close);
        assert!(matches!(read_request(&mut r, &mut w), Err(ReadError::Gone)));

        for (wire, needle) in [
            (&b"NONSENSE\r\n\r\n"[..], "malformed request line"),
            (b"GET / SPDY/3\r\n\r\n", "unsupported protocol"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                "larger than 64 MiB",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
        ] {
            match read_request(&mut BufReader::new(wire), &mut Vec::new()) {
                Err(ReadError::Bad(e)) => assert!(e.message.contains(needle), "{}", e.message),
                _ => panic!("{} was accepted", String::from_utf8_lossy(wire)),
            }
        }
    }

    /// Until the model is loaded, /health and chat/completions answer 503 with `Retry-After`
    /// (clients that retry 503, vlmtest's among them, wait); /v1/models already answers.
    #[test]
    fn a_loading_model_answers_503() {
        let shared = Shared {
            name: "m".into(),
            defaults: defaults(),
            ready: OnceLock::new(),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
        };
        let req = |method: &str, path: &str, body: &str| HttpRequest {
            method: method.into(),
            path: path.into(),
            close: false,
            body: body.as_bytes().to_vec(),
        };
        let health = shared.route(&req("GET", "/health", ""));
        assert_eq!(health.status, 503);
        assert_eq!(health.body["status"], "loading");
        assert!(health.headers.contains(&("retry-after", "1".to_string())));
        let chat = shared.route(&req(
            "POST",
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        ));
        assert_eq!(chat.status, 503);
        assert!(
            chat.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("still loading")
        );
        // A bad request is still a 400, loading or not.
        assert_eq!(
            shared
                .route(&req("POST", "/v1/chat/completions", "{"))
                .status,
            400
        );
        assert_eq!(shared.route(&req("GET", "/v1/models", "")).status, 200);
    }

    #[test]
    fn replies_carry_usage_and_the_finish_reason() {
        let g = Generation {
            text: "a cat".into(),
            prompt_tokens: Some(10),
            completion_tokens: Some(8),
            ..Generation::default()
        };
        let b = completion_body("m", 3, &g, 8);
        assert_eq!(b["model"], "m");
        assert_eq!(b["choices"][0]["message"]["content"], "a cat");
        assert_eq!(b["choices"][0]["finish_reason"], "length");
        assert_eq!(b["usage"]["total_tokens"], 18);
        let b = completion_body("m", 4, &g, 9);
        assert_eq!(b["choices"][0]["finish_reason"], "stop");
    }
}

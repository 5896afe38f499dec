//! Every HTTP backend survives real servers' faults: retries with backoff on connection errors,
//! 429 (honouring Retry-After), 502/503/504; no retry on other 4xx/5xx; a hung server never hangs
//! the run beyond the model's timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::sync::Latch;
use common::{Project, Reply, Server};

const SUITE: &str =
    "cases:\n  - { id: q, question: capital?, expect: { contains: Paris }, snapshot: false }\n";

/// A server that answers `script[i]` to the i-th chat request, then "Paris".
fn scripted(script: Vec<Reply>) -> Server {
    let n = Arc::new(AtomicUsize::new(0));
    Server::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        script
            .get(i)
            .cloned()
            .unwrap_or_else(|| Reply::answer("Paris"))
    })
}

fn run(server: &Server, extra: &str) -> (common::Run, Project) {
    let p = Project::new();
    p.suite("s", SUITE).models(server, &[("m", extra)]);
    let r = p.run(&[], &[]);
    (r, p)
}

fn retries(p: &Project) -> u64 {
    p.report()["cases"][0]["turns"][0]["retries"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_loading_server_is_waited_for_and_retries_are_recorded() {
    let loading = Reply::raw(503, r#"{"error":{"code":503,"message":"Loading model"}}"#);
    let server = scripted(vec![loading.clone(), loading]);
    let (r, p) = run(&server, "");
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert_eq!(server.chats().len(), 3);
    assert_eq!(retries(&p), 2);
    assert_eq!(p.report()["models"][0]["retries"], 2);
}

#[test]
fn bad_gateways_and_dropped_connections_are_retried() {
    let server = scripted(vec![
        Reply::raw(502, "<html>Bad Gateway</html>"),
        Reply::hang_up(),
        Reply::raw(504, "<html>Gateway Timeout</html>"),
    ]);
    let (r, p) = run(&server, "");
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert_eq!(retries(&p), 3);
}

#[test]
fn too_many_requests_honours_retry_after() {
    let server = scripted(vec![
        Reply::raw(429, r#"{"error":"slow down"}"#).header("Retry-After", "1"),
    ]);
    let start = Instant::now();
    let (r, p) = run(&server, "");
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert!(p.report()["cases"][0]["latency_ms"].as_f64().unwrap() >= 1000.0);
}

#[test]
fn too_many_requests_honours_retry_after_as_an_http_date() {
    // Two seconds from now, as an IMF-fixdate (whole seconds: at least one second ahead of
    // `start`, taken first).
    let start = Instant::now();
    let at = std::time::SystemTime::now() + Duration::from_secs(2);
    let date = httpdate::fmt_http_date(at);
    let server = scripted(vec![
        Reply::raw(429, r#"{"error":"slow down"}"#).header("Retry-After", &date),
    ]);
    let (r, p) = run(&server, "");
    assert_eq!(r.outcome("m::s::q"), "ok", "{}", r.all());
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(retries(&p), 1);
}

#[test]
fn client_errors_and_internal_errors_are_not_retried() {
    for status in [400, 401, 404, 422, 500] {
        let server = scripted(vec![Reply::raw(status, r#"{"error":{"message":"nope"}}"#)]);
        let (r, _) = run(&server, "");
        assert_eq!(r.outcome("m::s::q"), "FAILED", "{status}: {}", r.all());
        assert_eq!(server.chats().len(), 1, "HTTP {status} was retried");
        assert!(r.stdout.contains(&format!("HTTP {status}")), "{}", r.stdout);
    }
}

/// The server never answers while the run lasts (it holds the request until the test lets it
/// go): the run ending at all shows the timeout cut the request, with no wall-clock margin; the
/// 120 s limit is a hang guard.
#[test]
fn a_hung_server_fails_the_case_within_the_timeout() {
    let release = Arc::new(Latch::new(1));
    let held = release.clone();
    let server = Server::start(move |_| {
        held.wait(Duration::from_secs(600));
        Reply::answer("Paris")
    });
    let p = Project::new();
    p.suite("s", SUITE)
        .models(&server, &[("m", "timeout_s = 1")]);
    let r = common::sync::run_or_kill(p.command(&[], &[]), Duration::from_secs(120));
    release.arrive();
    assert_eq!(r.outcome("m::s::q"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("timed out after 1.0 s"), "{}", r.stdout);
    assert_eq!(server.chats().len(), 1, "a timeout is not retried");
}

/// The claim is an upper bound (retries stop within `timeout_s`), so this test keeps one, on the
/// latency the harness measured (not the process's start-up), at 5× the timeout.
#[test]
fn a_server_that_never_recovers_fails_within_the_timeout() {
    let server = Server::start(|_| Reply::raw(503, r#"{"error":{"message":"Loading model"}}"#));
    let (r, p) = run(&server, "timeout_s = 2");
    assert_eq!(r.outcome("m::s::q"), "FAILED", "{}", r.all());
    assert!(r.stdout.contains("HTTP 503"), "{}", r.stdout);
    assert!(
        r.stdout.contains("retries") || r.stdout.contains("no time left to retry"),
        "{}",
        r.stdout
    );
    let latency = p.report()["cases"][0]["latency_ms"].as_f64().unwrap();
    assert!(latency < 10_000.0, "took {latency} ms");
    assert!(server.chats().len() >= 2, "it was retried");
}

#[test]
fn malformed_replies_fail_with_the_start_of_the_body() {
    for (body, needle) in [
        ("{\"choices\": [", "not JSON"),
        (
            "<!DOCTYPE html><html><body><h1>Welcome to nginx</h1></body></html>",
            "Welcome to nginx",
        ),
        ("{\"choices\": [{\"index\": 0}]}", "no `message`"),
        ("{\"object\": \"list\"}", "no `choices`"),
    ] {
        let server = scripted(vec![Reply::raw(200, body)]);
        let (r, _) = run(&server, "");
        assert_eq!(r.outcome("m::s::q"), "FAILED", "{body}");
        assert!(r.stdout.contains(needle), "{needle:?} not in {}", r.stdout);
        assert_eq!(server.chats().len(), 1, "a malformed 200 is not retried");
    }
}

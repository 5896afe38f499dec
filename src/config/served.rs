//! `VLMTEST_SERVED`: models of models.toml that a `vlmtest serve` already holds, so that a run
//! asks that server instead of loading the weights itself.
//!
//! The value is a list of `NAME=URL` entries separated by commas (or whitespace), each URL the
//! server's OpenAI base URL: `smolvlm-256m=http://127.0.0.1:8000/v1`. The nextest setup mode of
//! `vlmtest serve` (`vlmtest serve --nextest`) writes it into `$NEXTEST_ENV`; anyone may set it by
//! hand. A named model keeps its name (so its test names and snapshots stay the same), its
//! generation settings and its `text_only`; only its backend becomes `openai` at that URL.

use std::time::Duration;

use super::models::{BackendSpec, ModelsConfig, OpenAiSpec};
use crate::error::ConfigError;

/// How long a request to a served model may take, queueing included: the processes of a
/// nextest run may all be waiting for the one model.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(600);

/// One `NAME=URL` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub model: String,
    /// Without a trailing slash, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
}

/// Reads the value of `VLMTEST_SERVED`.
pub(crate) fn parse(value: &str) -> Result<Vec<Served>, ConfigError> {
    let mut out: Vec<Served> = Vec::new();
    for entry in value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        let bad = |why: &str| {
            ConfigError::env(format!(
                "VLMTEST_SERVED: `{entry}` {why} (expected NAME=URL entries separated by commas, e.g. smolvlm-256m=http://127.0.0.1:8000/v1)"
            ))
        };
        let Some((model, url)) = entry.split_once('=') else {
            return Err(bad("has no `=`"));
        };
        if model.is_empty() {
            return Err(bad("names no model"));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(
                "has a URL that does not start with http:// or https://",
            ));
        }
        if out.iter().any(|s| s.model == model) {
            return Err(bad("names a model a second time"));
        }
        out.push(Served {
            model: model.to_string(),
            base_url: url.trim_end_matches('/').to_string(),
        });
    }
    Ok(out)
}

/// Points each served model of `models` at its server.
pub(crate) fn apply(models: &mut ModelsConfig, served: &[Served]) -> Result<(), ConfigError> {
    for s in served {
        let known: Vec<&str> = models.models.iter().map(|m| m.name.as_str()).collect();
        let known = known.join(", ");
        let Some(spec) = models.models.iter_mut().find(|m| m.name == s.model) else {
            return Err(ConfigError::env(format!(
                "VLMTEST_SERVED names model `{}`, which {} does not declare (models: {known})",
                s.model,
                models.file.display(),
            )));
        };
        let concurrency = match &spec.backend {
            BackendSpec::OpenAi(o) => o.concurrency,
            BackendSpec::LlamaServer(l) => l.concurrency,
            // An in-process model answers one request at a time, served or not.
            BackendSpec::Candle(_) => 1,
        };
        tracing::info!(model = %s.model, url = %s.base_url, "model served by another process");
        spec.backend = BackendSpec::OpenAi(OpenAiSpec {
            base_url: s.base_url.clone(),
            model: s.model.clone(),
            api_key_env: None,
            timeout: TIMEOUT,
            concurrency,
            stream: false,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_and_checked() {
        let s = parse(" a=http://127.0.0.1:1/v1/, b.c=https://h/v1 ").unwrap();
        assert_eq!(
            s,
            [
                Served {
                    model: "a".into(),
                    base_url: "http://127.0.0.1:1/v1".into()
                },
                Served {
                    model: "b.c".into(),
                    base_url: "https://h/v1".into()
                }
            ]
        );
        assert!(parse("").unwrap().is_empty());
        for (bad, why) in [
            ("a", "has no `=`"),
            ("=http://x", "names no model"),
            ("a=ftp://x", "does not start with http"),
            ("a=http://x,a=http://y", "a second time"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("VLMTEST_SERVED"),
                "{bad}: {e}"
            );
        }
    }
}

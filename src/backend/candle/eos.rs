//! The tokens that end an answer: the ids transformers' `generate()` stops on for a model folder.
//!
//! Reference: huggingface/transformers v5.23.0, `generation/utils.py`
//! (`GenerationMixin.adjust_generation_fn`, `_prepare_special_tokens`, `EosTokenCriteria`) and
//! `generation/configuration_utils.py` (`GenerationConfig.from_model_config`). What it does, and
//! what is reproduced:
//!
//! * With a `generation_config.json`, its `eos_token_id` is the whole stop set: a number or a
//!   list. Nothing else is added: not the tokenizer's `eos_token`, not tokens found by name
//!   (`<end_of_utterance>`, `<|im_end|>`, `</s>`, `<eos>`). A file without `eos_token_id` (or
//!   with `null`) means no stop token: the answer runs to `max_new_tokens`.
//! * Without the file, transformers builds the generation config from `config.json`: the
//!   top-level `eos_token_id` when it is set, else the decoder's (`text_config`, or `decoder` /
//!   `generator` for the models that have those).
//!
//! vLLM and llama.cpp also stop on the tokenizer's EOS token; the in-process backend is checked
//! token for token against transformers, so it follows transformers (the goldens in
//! `tests/fixtures/*-eos/golden_eos.json` include a repo whose `generation_config.json` leaves
//! `<|im_end|>` out, and transformers generates through it).

use std::path::Path;

use serde_json::Value;

use super::{Error, Result, read_json};

/// The stop token ids for the model in `dir` (see the module documentation).
pub(crate) fn stop_tokens(dir: &Path) -> Result<Vec<u32>> {
    let ids = if dir.join("generation_config.json").is_file() {
        let v: Value = read_json(dir, "generation_config.json")?;
        token_ids(
            v.get("eos_token_id"),
            "generation_config.json",
            "eos_token_id",
        )?
    } else {
        let v: Value = read_json(dir, "config.json")?;
        let mut ids = token_ids(v.get("eos_token_id"), "config.json", "eos_token_id")?;
        // The first decoder config that is a non-empty object (Python's truthiness).
        let decoder = ["decoder", "generator", "text_config"]
            .into_iter()
            .find(|k| {
                v.get(*k)
                    .and_then(|c| c.as_object())
                    .is_some_and(|o| !o.is_empty())
            });
        if let (true, Some(sub)) = (ids.is_empty(), decoder) {
            let key = format!("{sub}.eos_token_id");
            ids = token_ids(v[sub].get("eos_token_id"), "config.json", &key)?;
        }
        ids
    };
    if ids.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            "no eos_token_id in generation_config.json (or, without that file, config.json): answers run to max_new_tokens, as in transformers"
        );
    }
    Ok(ids)
}

/// `eos_token_id` as a list of ids: absent or `null` is none.
fn token_ids(v: Option<&Value>, file: &str, key: &str) -> Result<Vec<u32>> {
    let bad = |got: &Value| {
        Error::invalid(
            file,
            format!("`{key}` is {got} (expected a token id or a list of token ids)"),
        )
    };
    let id = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(x))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(id).collect(),
        Some(x) => id(x).map(|n| vec![n]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn generation_config_alone_decides() {
        let d = dir(&[
            ("generation_config.json", r#"{"eos_token_id": [2, 359]}"#),
            ("config.json", r#"{"eos_token_id": 7}"#),
        ]);
        assert_eq!(stop_tokens(d.path()).unwrap(), [2, 359]);
        let d = dir(&[("generation_config.json", r#"{"eos_token_id": 1}"#)]);
        assert_eq!(stop_tokens(d.path()).unwrap(), [1]);
        let d = dir(&[
            ("generation_config.json", r#"{"bos_token_id": 1}"#),
            ("config.json", r#"{"eos_token_id": 7}"#),
        ]);
        assert!(stop_tokens(d.path()).unwrap().is_empty());
    }

    #[test]
    fn without_it_config_json_decides_top_level_first() {
        let d = dir(&[(
            "config.json",
            r#"{"eos_token_id": 1, "text_config": {"eos_token_id": 5}}"#,
        )]);
        assert_eq!(stop_tokens(d.path()).unwrap(), [1]);
        let d = dir(&[(
            "config.json",
            r#"{"eos_token_id": null, "text_config": {"eos_token_id": [5, 6]}}"#,
        )]);
        assert_eq!(stop_tokens(d.path()).unwrap(), [5, 6]);
        let d = dir(&[("config.json", r#"{"vision_config": {}}"#)]);
        assert!(stop_tokens(d.path()).unwrap().is_empty());
    }

    #[test]
    fn a_bad_value_names_the_file_and_key() {
        let d = dir(&[("generation_config.json", r#"{"eos_token_id": "</s>"}"#)]);
        let e = stop_tokens(d.path()).unwrap_err().to_string();
        assert!(e.contains("generation_config.json: `eos_token_id`"), "{e}");
        let d = dir(&[(
            "config.json",
            r#"{"text_config": {"eos_token_id": [2, -1]}}"#,
        )]);
        let e = stop_tokens(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.json: `text_config.eos_token_id` is -1"),
            "{e}"
        );
    }
}

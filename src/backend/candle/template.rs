//! The repo's own chat template (Jinja), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: messages whose `content` is a list of
//! `{"type": "image"}` / `{"type": "text", "text": ...}` parts, `add_generation_prompt`, and
//! the tokenizer's special tokens as variables.

use std::path::Path;

use serde_json::{Value, json};

use super::{Error, Result};
use crate::backend::{Request, Role};

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    /// `bos_token`, `eos_token`, ... from tokenizer_config.json.
    specials: serde_json::Map<String, Value>,
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    /// Finds the template where the repo keeps it: `chat_template.jinja`, `chat_template.json`,
    /// or `tokenizer_config.json` (a string, or a list of named templates: `default` is used).
    pub fn load(dir: &Path) -> Result<Self> {
        let tok_cfg: Value = if dir.join("tokenizer_config.json").is_file() {
            super::read_json(dir, "tokenizer_config.json")?
        } else {
            json!({})
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                path: jinja.clone(),
                source,
            })?
        } else if dir.join("chat_template.json").is_file() {
            let v: Value = super::read_json(dir, "chat_template.json")?;
            v.get("chat_template")
                .and_then(|t| t.as_str())
                .map(String::from)
                .ok_or_else(|| {
                    Error::invalid(dir.join("chat_template.json"), "no `chat_template` string")
                })?
        } else {
            match tok_cfg.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(String::from)
                    .ok_or_else(|| {
                        Error::invalid(
                            "tokenizer_config.json",
                            "`chat_template` list has no template",
                        )
                    })?,
                _ => {
                    return Err(Error::unsupported(format!(
                        "{} has no chat template (expected chat_template.jinja, chat_template.json or `chat_template` in tokenizer_config.json)",
                        dir.display()
                    )));
                }
            }
        };
        Self::from_source(source, &tok_cfg)
    }

    pub(crate) fn from_source(source: String, tokenizer_config: &Value) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        // transformers compiles templates with trim_blocks and lstrip_blocks.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|source| Error::Template {
                    what: "chat template syntax",
                    source,
                })?,
        );
        env.add_template_owned("chat", source)
            .map_err(|source| Error::Template {
                what: "the chat template does not parse",
                source,
            })?;
        let mut specials = serde_json::Map::new();
        if let Some(o) = tokenizer_config.as_object() {
            for (k, v) in o {
                if k.ends_with("_token")
                    && let Some(t) = token_text(v)
                {
                    specials.insert(k.clone(), Value::String(t));
                }
            }
        }
        Ok(Self { env, specials })
    }

    /// The conversation as transformers passes it to the template: system prompt first, then each
    /// message's images followed by its text.
    pub fn messages(request: &Request) -> Value {
        let mut out = Vec::new();
        if let Some(sys) = &request.params.system_prompt {
            out.push(json!({"role": "system", "content": [{"type": "text", "text": sys}]}));
        }
        for m in &request.messages {
            let mut parts: Vec<Value> = m.images.iter().map(|_| json!({"type": "image"})).collect();
            parts.push(json!({"type": "text", "text": m.text}));
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            out.push(json!({"role": role, "content": parts}));
        }
        Value::Array(out)
    }

    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|source| Error::Template {
                what: "chat template",
                source,
            })?;
        let mut ctx = self.specials.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        tmpl.render(minijinja::value::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|source| Error::Template {
                what: "the chat template failed",
                source,
            })
    }
}

//! What can go wrong with an in-process model: reading its folder (files, JSON, tokenizer,
//! weights), checking what the files say against what the code supports, putting a request to
//! it, and running it. Every variant's message is a sentence the user sees as is (prefixed by
//! the model's name where the backend reports it); the variants say what failed, so callers can
//! tell a broken checkpoint from a request the model cannot answer or a failed forward pass.

use std::path::PathBuf;

use crate::kinds::DeviceKind;

/// An in-process model's error (loading, preprocessing, generation).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the model folder cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON file of the model folder is not JSON, or not shaped as the code expects.
    #[error(
        "{}:{}: {source} (expected the file as the Hugging Face repo has it)",
        .path.display(),
        .source.line()
    )]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A `tokenizer.json` that the tokenizers library cannot load.
    #[error("cannot load {}: {source}", .path.display())]
    Tokenizer {
        path: PathBuf,
        source: tokenizers::Error,
    },
    /// The safetensors files cannot be memory-mapped (a truncated or malformed file).
    #[error("cannot map the weights in {}: {source}", .dir.display())]
    Mmap {
        dir: PathBuf,
        source: candle_core::Error,
    },
    /// A tensor the configuration implies is missing from the weights, or has another shape.
    /// `against` says what the weights were read with (`config.json`, a layout). (The source
    /// is boxed to keep this enum under clippy's `result_large_err` bound.)
    #[error("the weights in {} do not match {against}: {source}", .dir.display())]
    Weights {
        dir: PathBuf,
        against: &'static str,
        source: Box<candle_core::Error>,
    },
    /// A value in a file of the model folder that the code refuses, with what it expected.
    #[error("{}: {what}", .file.display())]
    Invalid { file: PathBuf, what: String },
    /// The checkpoint asks for something this code does not do, or contradicts itself
    /// (the message names the files and keys).
    #[error("{0}")]
    Unsupported(String),
    /// A request this model cannot answer as asked (an image it needs, a placeholder count).
    #[error("{0}")]
    Request(String),
    /// An image of the request cannot be read.
    #[error(transparent)]
    ImageFile(#[from] crate::config::image::ImageError),
    /// An image of the request cannot be decoded.
    #[error("cannot decode {shown}: {source}")]
    Image {
        shown: String,
        source: image::ImageError,
    },
    /// Text the tokenizer cannot encode (`what`: the prompt, the question).
    #[error("cannot tokenize {what}: {source}")]
    Tokenize {
        what: &'static str,
        source: tokenizers::Error,
    },
    /// The answer's tokens cannot be decoded into text.
    #[error("cannot decode the answer's tokens: {0}")]
    Detokenize(#[source] tokenizers::Error),
    /// The chat template does not compile or fails to render (`what` says which).
    #[error("{what}: {source}")]
    Template {
        what: &'static str,
        source: minijinja::Error,
    },
    /// The device models.toml asks for is not available in this build or on this machine.
    #[error("device = \"{kind}\" is not available: {source} ({hint})")]
    Device {
        kind: DeviceKind,
        source: candle_core::Error,
        hint: &'static str,
    },
    /// A tensor operation outside the model's forward pass failed (`what`: building the pixel
    /// tensor, the vision encoder, sampling, decoding).
    #[error("{what}: {source}")]
    Tensor {
        what: &'static str,
        source: candle_core::Error,
    },
    /// The model's forward pass failed.
    #[error("the forward pass failed: {0}")]
    Forward(#[from] candle_core::Error),
}

/// The result of the candle backend's functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Unsupported`] from a message.
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::Unsupported(message.into())
    }

    /// [`Error::Request`] from a message.
    pub fn request(message: impl Into<String>) -> Error {
        Error::Request(message.into())
    }

    /// [`Error::Invalid`]: `what` is wrong in `file`.
    pub fn invalid(file: impl Into<PathBuf>, what: impl Into<String>) -> Error {
        Error::Invalid {
            file: file.into(),
            what: what.into(),
        }
    }

    /// A closure for `map_err` that names a failed tensor operation ([`Error::Tensor`]).
    pub(crate) fn tensor(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
        move |source| Error::Tensor { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages are the ones users (and tests) saw when these were strings.
    #[test]
    fn messages_keep_their_text() {
        assert!(std::mem::size_of::<Error>() < 128, "result_large_err");
        let e = Error::invalid("config.json", "`vision_config.patch_size` is 0");
        assert_eq!(
            e.to_string(),
            "config.json: `vision_config.patch_size` is 0"
        );
        let e = Error::Weights {
            dir: "/m".into(),
            against: "config.json",
            source: Box::new(candle_core::Error::Msg("cannot find tensor x".into())),
        };
        assert_eq!(
            e.to_string(),
            "the weights in /m do not match config.json: cannot find tensor x"
        );
        let e = Error::from(candle_core::Error::Msg("boom".into()));
        assert_eq!(e.to_string(), "the forward pass failed: boom");
        let json = serde_json::from_str::<serde_json::Value>("{\n]").unwrap_err();
        let e = Error::Config {
            path: "/m/config.json".into(),
            source: json,
        };
        assert!(
            e.to_string().starts_with("/m/config.json:2: ")
                && e.to_string()
                    .ends_with(" (expected the file as the Hugging Face repo has it)"),
            "{e}"
        );
    }
}

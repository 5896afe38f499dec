//! What every in-process architecture reads from its model folder before anything of its own:
//! the tokenizer, the weights (memory-mapped, see [`super::var_builder`]), the tokens that end
//! an answer ([`super::eos`]), the image token id, and the error that says the weights do not
//! match the configuration. An adapter's `load` opens a [`Checkpoint`] and then reads only its
//! own configuration and tensors.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::{Error, Result};

/// A model folder laid out like its Hugging Face repo, opened.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub tokenizer: tokenizers::Tokenizer,
    /// The weights, at the dtype the model computes in.
    pub vb: VarBuilder<'static>,
}

impl Checkpoint {
    /// Opens `dir` with its own `tokenizer.json`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Checkpoint> {
        Self::open_with_tokenizer(dir, &dir.join("tokenizer.json"), dtype, device)
    }

    /// Opens `dir` with the tokenizer file `tokenizer` (one from another repo, as models.toml's
    /// `tokenizer` / `tokenizer_repo` name it).
    pub fn open_with_tokenizer(
        dir: &Path,
        tokenizer: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Checkpoint> {
        let tokenizer = super::load_tokenizer_file(tokenizer)?;
        let vb = super::var_builder(dir, dtype, device)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            tokenizer,
            vb,
        })
    }

    /// Reads a JSON file of the folder (`config.json`, `preprocessor_config.json`, …).
    pub fn read<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        super::read_json(&self.dir, name)
    }

    /// The tokens that end an answer, as transformers' `generate()` finds them.
    pub fn stop_tokens(&self) -> Result<Vec<u32>> {
        super::eos::stop_tokens(&self.dir)
    }

    /// The image token's id: config.json's (`key`, read into `from_config`), else the
    /// tokenizer's `token`.
    pub fn image_token(&self, key: &str, from_config: Option<u32>, token: &str) -> Result<u32> {
        from_config
            .or_else(|| self.tokenizer.token_to_id(token))
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "neither config.json's {key} nor the tokenizer has {token}"
                ))
            })
    }

    /// For `map_err` on the loading of tensors: the weights do not match config.json.
    pub fn weights_error(&self) -> impl Fn(candle_core::Error) -> Error + 'static {
        self.weights_error_against("config.json")
    }

    /// As [`Checkpoint::weights_error`], naming what the weights were read against.
    pub fn weights_error_against(
        &self,
        against: &'static str,
    ) -> impl Fn(candle_core::Error) -> Error + 'static {
        let dir = self.dir.clone();
        move |source| Error::Weights {
            dir: dir.clone(),
            against,
            source: Box::new(source),
        }
    }
}

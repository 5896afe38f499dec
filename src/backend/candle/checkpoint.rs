//! What every in-process architecture reads from its model folder before anything of its own:
//! the tokenizer, the weights (memory-mapped, see [`super::var_builder`]), the tokens that end
//! an answer ([`super::eos`]), the image token id, and the error that says the weights do not
//! match the configuration. An adapter's `load` opens a [`Checkpoint`] and then reads only its
//! own configuration and tensors.
//!
//! Where an adapter takes less of it, and why: PaliGemma has no chat template (its processor
//! writes the prompt) and Phi-3.5-Vision no image token (its prompt numbers the images), so they
//! skip those calls; Moondream2 (both layouts) reads its tokenizer from another repo when models.toml
//! names one ([`Checkpoint::open_with_tokenizer`]) and stops on its own end text or config id,
//! not on transformers' stop tokens; its 2024 layout reads the vision sizes from the weights'
//! shapes, and its 2025 layout's `config.json` is Moondream's own format.
//!
//! Adding an architecture: a variant of [`crate::kinds::Arch`] (its name, and whether it
//! answers without an image); a file here whose `load(dir, precision, device)` opens a
//! [`Checkpoint`] and whose model implements [`super::Vlm`] (prompts with `<image>` placeholders
//! expand through [`super::prompt::expand_images`]); its `pub mod` and one match arm in
//! `Candle::load` (`mod.rs`).

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
    pub(crate) fn open_with_tokenizer(
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

    /// The tokens that end an answer, as transformers' `generate()` finds them.
    pub(crate) fn stop_tokens(&self) -> Result<Vec<u32>> {
        super::eos::stop_tokens(&self.dir)
    }

    /// The image token's id: config.json's (`key`, read into `from_config`), else the
    /// tokenizer's `token`.
    pub(crate) fn image_token(
        &self,
        key: &str,
        from_config: Option<u32>,
        token: &str,
    ) -> Result<u32> {
        from_config
            .or_else(|| self.tokenizer.token_to_id(token))
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "neither config.json's {key} nor the tokenizer has {token}"
                ))
            })
    }

    /// For `map_err` on the loading of tensors: the weights do not match config.json.
    pub(crate) fn weights_error(&self) -> impl Fn(candle_core::Error) -> Error + 'static {
        self.weights_error_against("config.json")
    }

    /// As [`Checkpoint::weights_error`], naming what the weights were read against.
    pub(crate) fn weights_error_against(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn smolvlm() -> Checkpoint {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smolvlm");
        Checkpoint::open(&dir, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_image_token_is_config_json_s_else_the_tokenizer_s() {
        let c = smolvlm();
        let from_tokenizer = c.tokenizer.token_to_id("<image>").unwrap();
        assert_eq!(
            c.image_token("image_token_id", None, "<image>").unwrap(),
            from_tokenizer
        );
        assert_eq!(
            c.image_token("image_token_id", Some(from_tokenizer + 1), "<image>")
                .unwrap(),
            from_tokenizer + 1
        );
        let e = c
            .image_token("image_token_index", None, "<nope>")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "neither config.json's image_token_index nor the tokenizer has <nope>"
        );
    }

    #[test]
    fn a_tensor_the_weights_lack_names_the_folder_and_config_json() {
        let c = smolvlm();
        let e =
            c.vb.get(3, "no.such.tensor")
                .map_err(c.weights_error())
                .unwrap_err();
        assert!(matches!(e, Error::Weights { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!(
                "the weights in {} do not match config.json: ",
                c.dir.display()
            )) && shown.contains("no.such.tensor"),
            "{shown}"
        );
    }
}

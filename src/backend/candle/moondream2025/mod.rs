//! Moondream2 as `vikhyatk/moondream2` has it since 2025 (revision `2025-06-21` and later): a
//! 27-layer SigLIP-shaped encoder over overlapping 378-px crops, stitched and pooled back to
//! 27 × 27, a projection MLP, and a Phi-shaped parallel decoder whose first 730 positions (BOS
//! and the image) attend both ways; its tokenizer is `moondream/starmie-v1`, another repo.
//! Built from candle / candle-nn pieces, not from candle-transformers' (2024) `moondream`.
//!
//! Reference: vikhyat/moondream `moondream/torch/*.py` at commit
//! 44146f139242dacdf7c02b799e68097424a31036 (the code of the Hub revision 2025-06-21). The
//! pieces are documented where they are ported: [`config`] (dimensions), [`crops`]
//! (preprocessing), [`vision`], [`text`]. This file holds the prompts and the generation rules
//! (`moondream.py`'s `query`, `caption` and `_generate_answer`), and their quirks:
//! - **Query**: `prefix + encode(question) + suffix + suffix`, i.e. `[1, <query>, 2, …, 3, 3]`:
//!   the answer marker appears twice (the reference appends the suffix once in the list and again
//!   in its non-reasoning branch; the model was trained that way). The question is encoded raw
//!   (no leading space, nothing added by the tokenizer).
//! - **Caption**: the template alone, `[1, <describe>, 2, <length>, 3]` (one marker).
//! - **Without an image** (supported since 2025-06-21): `[BOS] + query prompt`, from position 0
//!   with a plain causal mask.
//! - **Generation**: the first token comes from the prompt's logits unmasked; at every later
//!   step the logit of `answer_id` (3) is −∞. [`Vlm::step`] applies that mask, so greedy decoding
//!   and the sampling of the shared loop both get it. EOS (0) ends the answer. Answers are
//!   decoded skipping special tokens.
//!
//! How vlmtest asks it (Moondream has no chat format):
//! - The prompt is the conversation's last user message; earlier turns are not sent (there is
//!   no format for them), the system prompt neither. The image is the conversation's last one.
//! - A prompt that is exactly `caption` runs the caption path at length `normal`;
//!   `caption short`, `caption normal`, `caption long` choose the length (the template names
//!   of `config.json`). Every other prompt is a query.
//!
//! The reference's default decoding is sampling (temperature 0.5, top-p 0.3); vlmtest's is
//! greedy at `temperature = 0`, and its sampling (any other temperature) has no top-p.

pub mod config;
pub mod crops;
pub mod text;
pub mod vision;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use self::config::{CROP, Config, GRID};
use self::crops::Crops;
use self::text::{Attend, Text};
use self::vision::{Stages, Vision};
use super::quant::{self, Precision, QuantSummary, Quantizer};
use super::{Checkpoint, Error, Prefill, Result, Vlm, decode_image};
use crate::backend::Request;

/// The tensor only the 2025 layout has.
pub(crate) const LAYOUT_KEY: &str = "model.vision.patch_emb.weight";

/// What a prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    Query(String),
    /// With the length (a caption template's name).
    Caption(String),
}

impl Task {
    /// `caption` → `Caption("normal")`; `caption short|normal|long|…` → that length; any other
    /// prompt is a query (see the module's documentation).
    pub fn parse(prompt: &str) -> Task {
        let t = prompt.trim();
        if t == "caption" {
            return Task::Caption("normal".into());
        }
        match t.strip_prefix("caption ") {
            Some(len) if !len.trim().is_empty() && !len.trim().contains(char::is_whitespace) => {
                Task::Caption(len.trim().to_string())
            }
            _ => Task::Query(prompt.to_string()),
        }
    }
}

pub struct Moondream2025 {
    cfg: Config,
    vision: Vision,
    text: Text,
    tokenizer: tokenizers::Tokenizer,
    eos: Vec<u32>,
    device: Device,
    dtype: DType,
    quantization: Option<QuantSummary>,
}

/// The weights' layout decides: the 2025 one has [`LAYOUT_KEY`]; otherwise the 2024 one, on
/// candle-transformers' `moondream`. `tokenizer` is a `tokenizer.json` to use instead of the
/// model folder's own. Quantized weights (`precision`) exist for the 2025 layout only.
pub fn load(
    dir: &Path,
    tokenizer: Option<&Path>,
    precision: impl Into<Precision>,
    device: &Device,
) -> Result<Box<dyn Vlm>> {
    let precision = precision.into();
    let vb = super::var_builder(dir, precision.dtype, device)?;
    if vb.contains_tensor(LAYOUT_KEY) {
        tracing::info!(dir = %dir.display(), "moondream2: the 2025 layout");
        let default = dir.join("tokenizer.json");
        Ok(Box::new(Moondream2025::load(
            dir,
            tokenizer.unwrap_or(&default),
            tokenizer.is_none(),
            precision,
            device,
        )?))
    } else {
        tracing::info!(dir = %dir.display(), "moondream2: the 2024 layout");
        if let Some(q) = precision.quant {
            return Err(Error::Unsupported(quant::unsupported(
                &format!(
                    "moondream2's 2024 layout (the weights in {} have no `{LAYOUT_KEY}`)",
                    dir.display()
                ),
                q,
            )));
        }
        Ok(Box::new(super::moondream::Moondream::load_with_tokenizer(
            dir,
            tokenizer,
            precision.dtype,
            device,
        )?))
    }
}

impl Moondream2025 {
    /// Loads `dir` (config.json + model.safetensors of the repo) with the tokenizer file
    /// `tokenizer_file` (starmie-v1's `tokenizer.json`); `from_repo` says it is the model
    /// folder's own, for the error when it is the repo's stale GPT-2 one.
    pub fn load(
        dir: &Path,
        tokenizer_file: &Path,
        from_repo: bool,
        precision: impl Into<Precision>,
        device: &Device,
    ) -> Result<Self> {
        let precision = precision.into();
        let dtype = precision.dtype;
        let q = Quantizer::new(precision.quant);
        // Of the checkpoint's preamble: the tokenizer (usually another repo's, starmie-v1) and
        // the weights. config.json is Moondream's own format ([`Config`]), the stop token is its
        // `eos_id`, and the image goes in as embeddings, not as an image token.
        let cfg = Config::load(dir)?;
        let ckpt = Checkpoint::open_with_tokenizer(dir, tokenizer_file, dtype, device)?;
        check_tokenizer(&ckpt.tokenizer, &cfg, tokenizer_file, from_repo)?;
        let vb = &ckpt.vb;
        let weights =
            ckpt.weights_error_against("Moondream's 2025 layout with config.json's dimensions");
        let vision = Vision::load(&cfg.vision, vb.pp("model.vision"), &q).map_err(&weights)?;
        let text = Text::load(&cfg.text, vb.pp("model.text"), &q).map_err(&weights)?;
        Ok(Self {
            eos: vec![cfg.tokenizer.eos_id],
            cfg,
            vision,
            text,
            tokenizer: ckpt.tokenizer,
            device: device.clone(),
            dtype,
            quantization: q.finish(&format!("moondream2 {}", dir.display())),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The crops of an image (see [`crops::overlap_crops`]).
    pub fn crops(&self, img: &RgbImage) -> Crops {
        crops::overlap_crops(
            img,
            self.cfg.vision.max_crops,
            self.cfg.vision.overlap_margin,
        )
    }

    /// `[crops, 3, 378, 378]` in the model's dtype.
    pub fn pixel_tensor(&self, crops: &Crops) -> Result<Tensor> {
        Tensor::from_vec(
            crops.pixels(),
            (crops.images.len(), 3, CROP, CROP),
            &self.device,
        )
        .and_then(|t| t.to_dtype(self.dtype))
        .map_err(Error::tensor("cannot build the pixel tensor"))
    }

    /// Normalised crops to every vision stage.
    pub fn encode_pixels(&self, pixels: &Tensor, tiling: (usize, usize)) -> Result<Stages> {
        self.vision
            .forward(pixels, tiling)
            .map_err(Error::tensor("the vision encoder failed"))
    }

    /// The tokens after the image prefix (with an image) or from position 0 (without).
    pub fn prompt_ids(&self, task: &Task, with_image: bool) -> Result<Vec<u32>> {
        let t = &self.cfg.tokenizer;
        match task {
            Task::Caption(len) => {
                if !with_image {
                    return Err(Error::request("a caption needs an image"));
                }
                let templates = t.templates.caption.as_ref().ok_or_else(|| {
                    Error::request(
                        "this Moondream does not caption (config.json has no caption templates)",
                    )
                })?;
                templates.get(len).cloned().ok_or_else(|| {
                    Error::request(format!(
                        "no caption length `{len}` (this Moondream has: {})",
                        templates.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })
            }
            Task::Query(q) => {
                let qt = t.templates.query.as_ref().ok_or_else(|| {
                    Error::request(
                        "this Moondream does not answer questions (config.json has no query template)",
                    )
                })?;
                let question =
                    self.tokenizer
                        .encode(q.as_str(), true)
                        .map_err(|source| Error::Tokenize {
                            what: "the question",
                            source,
                        })?;
                let mut ids = Vec::new();
                if !with_image {
                    ids.push(t.bos_id);
                }
                ids.extend(&qt.prefix);
                ids.extend(question.get_ids());
                ids.extend(&qt.suffix);
                ids.extend(&qt.suffix);
                let vocab = self.cfg.text.vocab_size;
                if let Some(id) = ids.iter().find(|id| **id as usize >= vocab) {
                    return Err(Error::unsupported(format!(
                        "the tokenizer gave token {id}, outside the model's vocabulary of {vocab} (config.json text.vocab_size): the tokenizer does not belong to this model"
                    )));
                }
                Ok(ids)
            }
        }
    }

    /// Empties the cache and runs the prompt: BOS + `image` (`[729, dim]` embeddings) attending
    /// both ways, then `ids` causally; or, without an image, `ids` causally from position 0.
    /// Returns the logits after the last id (unmasked).
    pub fn prefill_ids(&mut self, image: Option<&Tensor>, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::request("the prompt is empty"));
        }
        self.text.clear();
        if let Some(img) = image {
            let bos = self.text.embed(&[self.cfg.tokenizer.bos_id])?;
            let prefix = Tensor::cat(&[&bos, &img.to_dtype(self.dtype)?], 0)?;
            self.text.forward(&prefix, Attend::All)?;
        }
        let x = self.text.embed(ids)?;
        let hidden = self.text.forward(&x, Attend::Causal)?;
        Ok(self.text.logits(&hidden)?)
    }

    /// Positions in the KV cache.
    pub fn position(&self) -> usize {
        self.text.position()
    }
}

/// The tokenizer must be starmie-v1's (or one with its special tokens): the 2025 code has none
/// other, and the model repo's own `tokenizer.json` is a stale GPT-2 one.
fn check_tokenizer(
    tok: &tokenizers::Tokenizer,
    cfg: &Config,
    file: &Path,
    from_repo: bool,
) -> Result<()> {
    let eos = tok.token_to_id("<|endoftext|>");
    let marker = tok.token_to_id("<|md_reserved_0|>");
    if eos != Some(cfg.tokenizer.eos_id) || marker.is_none() {
        let hint = if from_repo {
            " (the model repo's own tokenizer.json is a stale GPT-2 one; the 2025 Moondream uses moondream/starmie-v1: add `tokenizer_repo = \"moondream/starmie-v1\"` to the model in models.toml, or `tokenizer = \"<folder or file>\"`)"
        } else {
            ""
        };
        return Err(Error::unsupported(format!(
            "{} is not Moondream's starmie-v1 tokenizer: expected <|endoftext|> = {} and the <|md_reserved_N|> tokens{hint}",
            file.display(),
            cfg.tokenizer.eos_id
        )));
    }
    Ok(())
}

impl Vlm for Moondream2025 {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let prompt = request.last_question();
        let task = Task::parse(prompt);
        let image = request
            .messages
            .iter()
            .flat_map(|m| m.images.iter())
            .next_back();
        let embeds = match image {
            Some(i) => {
                let img = decode_image(i)?;
                let crops = self.crops(&img);
                let px = self.pixel_tensor(&crops)?;
                Some(self.encode_pixels(&px, crops.tiling)?.embeddings)
            }
            None => None,
        };
        let ids = self.prompt_ids(&task, embeds.is_some())?;
        let logits = self.prefill_ids(embeds.as_ref(), &ids)?;
        Ok(Prefill {
            prompt_tokens: self.text.position(),
            logits,
        })
    }

    fn step(&mut self, token: u32) -> candle_core::Result<Tensor> {
        let x = self.text.embed(&[token])?;
        let hidden = self.text.forward(&x, Attend::All)?;
        let logits = self.text.logits(&hidden)?;
        // After the first token the answer marker is never chosen.
        let vocab = logits.dim(0)?;
        let mut mask = vec![0f32; vocab];
        mask[self.cfg.tokenizer.answer_id as usize] = f32::NEG_INFINITY;
        let mask = Tensor::from_vec(mask, vocab, logits.device())?;
        logits + mask
    }

    fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn quantization(&self) -> Option<&QuantSummary> {
        self.quantization.as_ref()
    }
}

/// 1 + 27 · 27: BOS and the image embeddings, the positions that attend both ways.
pub const PREFIX: usize = 1 + GRID * GRID;

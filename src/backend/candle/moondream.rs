//! Moondream2 (vikhyatk/moondream2, the early-2024 revisions such as `2024-03-06`: a SigLIP
//! vision encoder with a projection, and a Phi-1.5 decoder), on candle-transformers' `moondream`.
//! (`arch = "moondream2"` covers both layouts: [`super::moondream2025::load`] picks this file for
//! weights without the 2025 layout's tensors.)
//!
//! Moondream's code lives in its Hub repo (not in transformers), so there is no offline reference
//! to compare against; the tests check loading, preprocessing and generation on a tiny
//! candle-made checkpoint, and determinism.
//!
//! - The image is resized to 378×378 with bicubic filtering (Pillow-exact) and normalised with
//!   mean and std 0.5, as the repo's `Resize((378, 378), BICUBIC)` + `Normalize(0.5, 0.5)` does.
//! - The prompt is the repo's `answer_question`: `<|endoftext|>` (as BOS), the image embeddings,
//!   then `\n\n` + earlier turns as `Question: Q\n\nAnswer: A\n\n` + `Question: Q\n\nAnswer:`.
//! - Moondream cannot answer without an image (`text_only` defaults to false).
//! - config.json of the real repo does not carry the dimensions; they are candle's
//!   `moondream::Config::v2()`. A config.json whose `phi_config` and `vision_config` carry every
//!   dimension (as the test checkpoint's does) is used as written.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::moondream;
use image::RgbImage;

use super::{Prefill, Vlm, decode_image, load_tokenizer, read_json, resize_rgb};
use crate::backend::{Request, Role};
use crate::resample::Filter;

/// The side of the square the vision encoder takes.
pub const SIDE: usize = 378;

pub struct Moondream {
    model: moondream::Model,
    tokenizer: tokenizers::Tokenizer,
    bos: u32,
    eos: Vec<u32>,
    device: Device,
    dtype: DType,
}

/// The image as the vision encoder takes it: `[3, 378, 378]`, normalised. The scaling divides
/// by 255 in f32, as the repo's torchvision `ToDtype(float32, scale=True)` does, not in f64 as
/// transformers' image processors (and [`super::push_chw`]) do.
pub fn pixels(img: &RgbImage) -> Vec<f32> {
    let img = resize_rgb(img, SIDE, SIDE, Filter::Bicubic);
    let mut out = vec![0f32; 3 * SIDE * SIDE];
    for (i, p) in img.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * SIDE * SIDE + i] = (p.0[ch] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

/// The text after the image: earlier turns, then the question.
pub fn prompt(request: &Request) -> String {
    let mut s = String::from("\n\n");
    let mut pending: Option<&str> = None;
    for m in &request.messages {
        match m.role {
            Role::User => pending = Some(&m.text),
            Role::Assistant => {
                if let Some(q) = pending.take() {
                    s.push_str(&format!("Question: {q}\n\nAnswer: {}\n\n", m.text.trim()));
                }
            }
            Role::System => {}
        }
    }
    s.push_str(&format!("Question: {}\n\nAnswer:", pending.unwrap_or("")));
    s
}

impl Moondream {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, String> {
        Self::load_with_tokenizer(dir, None, dtype, device)
    }

    /// As [`Moondream::load`], with `tokenizer` (a `tokenizer.json`) instead of the folder's own
    /// when given.
    pub fn load_with_tokenizer(
        dir: &Path,
        tokenizer: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, String> {
        let raw: serde_json::Value = read_json(dir, "config.json")?;
        let dims_given = raw
            .get("phi_config")
            .and_then(|p| p.get("n_embd"))
            .is_some();
        let cfg = if dims_given {
            serde_json::from_value::<moondream::Config>(raw).map_err(|e| {
                format!("config.json: phi_config/vision_config: {e} (expected every dimension, or none for moondream2's own)")
            })?
        } else {
            moondream::Config::v2()
        };
        let tokenizer = match tokenizer {
            Some(file) => tokenizers::Tokenizer::from_file(file)
                .map_err(|e| format!("cannot load {}: {e}", file.display()))?,
            None => load_tokenizer(dir)?,
        };
        let bos = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or("tokenizer.json has no <|endoftext|> (moondream2's BOS and EOS)")?;
        let mut eos = vec![bos];
        if let Some(end) = tokenizer.token_to_id("<END>") {
            eos.push(end);
        }
        let vb = super::var_builder(dir, dtype, device)?;
        let model = moondream::Model::new(&cfg, vb).map_err(|e| {
            format!(
                "the weights in {} do not match moondream2's layout: {e}",
                dir.display()
            )
        })?;
        Ok(Self {
            model,
            tokenizer,
            bos,
            eos,
            device: device.clone(),
            dtype,
        })
    }

    /// Image embeddings, `[1, 729, hidden]`, for all the conversation's images (moondream2 takes
    /// one; with several, the first).
    fn encode_image(&self, img: &RgbImage) -> candle_core::Result<Tensor> {
        let px = Tensor::from_vec(pixels(img), (1, 3, SIDE, SIDE), &self.device)?
            .to_dtype(self.dtype)?;
        candle_core::Module::forward(self.model.vision_encoder(), &px)
    }
}

impl Vlm for Moondream {
    fn prefill(&mut self, request: &Request) -> Result<Prefill, String> {
        let image = request
            .messages
            .iter()
            .flat_map(|m| m.images.iter())
            .next()
            .ok_or("Moondream2 needs an image (declare the model with text_only = false)")?;
        let img = decode_image(image)?;
        let err = |e: candle_core::Error| format!("the forward pass failed: {e}");
        let embeds = self.encode_image(&img).map_err(err)?;
        let text = prompt(request);
        let ids = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| format!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec();
        let n = ids.len();
        let input = Tensor::new(ids.as_slice(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(err)?;
        let bos = Tensor::new(&[[self.bos]], &self.device).map_err(err)?;
        let image_tokens = embeds.dim(1).map_err(err)?;
        let text_model = self.model.text_model();
        text_model.clear_kv_cache();
        let logits = text_model
            .forward_with_img(&bos, &input, &embeds)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_dtype(DType::F32))
            .map_err(err)?;
        Ok(Prefill {
            prompt_tokens: 1 + image_tokens + n,
            logits,
        })
    }

    fn step(&mut self, token: u32) -> candle_core::Result<Tensor> {
        let input = Tensor::new(&[[token]], &self.device)?;
        self.model
            .text_model()
            .forward(&input)?
            .flatten_all()?
            .to_dtype(DType::F32)
    }

    fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

//! Moondream2 (vikhyatk/moondream2) at revision `2024-03-06`: preprocessing, prompt, stop tokens
//! and answer clean-up of the repo's remote code, over the model of [`super::moondream2024`].
//! (`arch = "moondream2"` covers both layouts: [`super::moondream2025::load`] picks this file for
//! weights without the 2025 layout's tensors.)
//!
//! Reference: `moondream.py` and `vision_encoder.py` of the repo at that revision, i.e.
//! `moondream/` of github.com/vikhyat/moondream at commit 53fbcbf (how that was established:
//! tests/fixtures/README.md), with the libraries of its requirements (torchvision 0.16, Pillow
//! 10, transformers 4.38). Its behaviour, quirks included:
//! - **Preprocessing**: `Resize((378, 378), BICUBIC)` of torchvision.transforms.v2 on a PIL image,
//!   which is Pillow's own bicubic resize (no aspect ratio kept, no crop; an image already
//!   378×378 is not resampled); `ToDtype(float32, scale=True)` multiplies each byte by the f32
//!   nearest to 1/255 (torchvision's `mul_(1 / 255)`: not a division, so a few values differ
//!   from `v / 255` in the last bit); `Normalize(0.5, 0.5)`: `(x - 0.5) / 0.5` in f32.
//! - **Prompt**: `answer_question` builds `"<image>\n\n{history}Question: {q}\n\nAnswer: "`
//!   (history: `"Question: {q}\n\nAnswer: {a}\n\n"` per earlier turn, as the repo's `sample.py`
//!   keeps it), **with a trailing space** (removed on 2024-03-13), and `input_embeds` splits it at
//!   `<image>`: BOS (`tokenizer.bos_token_id`, `<|endoftext|>`), the tokens of the text before it
//!   **plus the literal text `<image>`**, the 729 image embeddings, then the tokens of
//!   **`</image>`** plus the rest (the tags were dropped on 2024-03-13). `<image>` and `</image>`
//!   are plain text to the tokenizer (`<`, `image`, `>`). The text is tokenized without special
//!   tokens.
//! - **Stopping**: `generate` passes `eos_token_id = tokenizer("<END>").ids`. `<END>` is not a
//!   token, so these are the ids of its pieces (`<`, `END`, `>` in the real vocabulary), and
//!   generation stops at the first of **any** of them; `<|endoftext|>` does not stop it (the repo
//!   switched to it on 2024-04-02).
//! - **Answer**: the generated ids **including the stop token** are decoded skipping special
//!   tokens, with transformers' `clean_up_tokenization` (the tokenizer config's
//!   `clean_up_tokenization_spaces` is true: `" ."` → `"."`, `" 's"` → `"'s"`, …), then
//!   `re.sub("<$|<END$", "", answer).strip()`: a final `<` or `<END` is removed, so an answer
//!   stopped by `END` or `>` keeps that text. Python's `$` also matches before a final newline
//!   and `str.strip` also strips U+001C..U+001F; both are reproduced.
//! - Moondream cannot answer without an image (`text_only` defaults to false); with several
//!   images, the first is used.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::moondream2024::{self as arch, Model};
use super::{Checkpoint, Error, Prefill, Result, Vlm, decode_image, read_json, resize_rgb};
use crate::backend::{Request, Role};
use crate::resample::Filter;

/// The side of the square the vision encoder takes.
pub const SIDE: usize = arch::SIDE;

/// What `<END>` is made of in the tokenizer: the tokens that stop an answer.
const END_TEXT: &str = "<END>";

pub struct Moondream {
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    bos: u32,
    eos: Vec<u32>,
    clean_up_spaces: bool,
    device: Device,
    dtype: DType,
}

/// The image as the vision encoder takes it: `[3, 378, 378]`, normalised (see the module docs).
pub fn pixels(img: &RgbImage) -> Vec<f32> {
    let img = resize_rgb(img, SIDE, SIDE, Filter::Bicubic);
    let scale = (1.0f64 / 255.0) as f32;
    let mut out = vec![0f32; 3 * SIDE * SIDE];
    for (i, p) in img.pixels().enumerate() {
        for ch in 0..3 {
            out[ch * SIDE * SIDE + i] = (p.0[ch] as f32 * scale - 0.5) / 0.5;
        }
    }
    out
}

/// The prompt `answer_question` builds: earlier turns as history, then the question.
pub fn prompt(request: &Request) -> String {
    let mut history = String::new();
    let mut pending: Option<&str> = None;
    for m in &request.messages {
        match m.role {
            Role::User => pending = Some(&m.text),
            Role::Assistant => {
                if let Some(q) = pending.take() {
                    history.push_str(&format!("Question: {q}\n\nAnswer: {}\n\n", m.text.trim()));
                }
            }
            Role::System => {}
        }
    }
    format!(
        "<image>\n\n{history}Question: {}\n\nAnswer: ",
        pending.unwrap_or("")
    )
}

/// The prompt's token ids around the image: BOS, then the ids of the text up to and including
/// `<image>`, then (after the image embeddings) those of `</image>` and the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptIds {
    pub bos: u32,
    pub before_image: Vec<u32>,
    pub after_image: Vec<u32>,
}

/// Python's `str.isspace`: Unicode whitespace and the four information separators U+001C..F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' `clean_up_tokenization` (spaces before punctuation and English contractions).
pub(crate) fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// `re.sub("<$|<END$", "", s).strip()`: `$` matches at the end and before a final `\n`; the two
/// alternatives cannot both match, so at most one piece is removed.
pub(crate) fn strip_end_marker(s: &str) -> String {
    let (body, tail) = match s.strip_suffix('\n') {
        Some(b) if b.ends_with('<') || b.ends_with("<END") => (b, "\n"),
        _ => (s, ""),
    };
    let body = body
        .strip_suffix('<')
        .or_else(|| body.strip_suffix("<END"))
        .unwrap_or(body);
    format!("{body}{tail}").trim_matches(py_space).to_string()
}

/// Reads a special token's text (`"<|endoftext|>"` or `{"content": ...}`) from the tokenizer
/// config files.
fn special_token(dir: &Path, key: &str) -> Result<Option<String>> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        if !dir.join(file).is_file() {
            continue;
        }
        let v: serde_json::Value = read_json(dir, file)?;
        match v.get(key) {
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            Some(t) => {
                if let Some(s) = t.get("content").and_then(|c| c.as_str()) {
                    return Ok(Some(s.to_string()));
                }
            }
            None => {}
        }
    }
    Ok(None)
}

impl Moondream {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_tokenizer(dir, None, dtype, device)
    }

    /// As [`Moondream::load`], with `tokenizer` (a `tokenizer.json`, models.toml's `tokenizer` or
    /// `tokenizer_repo`) instead of the folder's own when given.
    pub(crate) fn load_with_tokenizer(
        dir: &Path,
        tokenizer: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // The stop tokens are `<END>`'s, not transformers' (the reference's own rule), and the
        // weights' shapes give the vision tower's sizes: of the checkpoint's preamble only the
        // tokenizer and the weights apply.
        let own = dir.join("tokenizer.json");
        let ckpt = Checkpoint::open_with_tokenizer(dir, tokenizer.unwrap_or(&own), dtype, device)?;
        let tokenizer = ckpt.tokenizer;
        let bos_text = special_token(dir, "bos_token")?.ok_or_else(|| {
            Error::invalid(
                dir,
                "no bos_token in tokenizer_config.json or special_tokens_map.json (moondream2 starts its prompt with it)",
            )
        })?;
        let bos = tokenizer.token_to_id(&bos_text).ok_or_else(|| {
            Error::invalid(
                dir,
                format!("bos_token `{bos_text}` is not in tokenizer.json"),
            )
        })?;
        let eos = tokenizer
            .encode(END_TEXT, false)
            .map_err(|source| Error::Tokenize {
                what: END_TEXT,
                source,
            })?
            .get_ids()
            .to_vec();
        if eos.is_empty() {
            return Err(Error::unsupported(format!(
                "tokenizer.json turns {END_TEXT} into no tokens"
            )));
        }
        let clean_up_spaces = if dir.join("tokenizer_config.json").is_file() {
            let v: serde_json::Value = read_json(dir, "tokenizer_config.json")?;
            // transformers' default when the key is absent
            v.get("clean_up_tokenization_spaces")
                .and_then(|c| c.as_bool())
                .unwrap_or(true)
        } else {
            true
        };
        let model = arch::load(dir, ckpt.vb)?;
        Ok(Self {
            model,
            tokenizer,
            bos,
            eos,
            clean_up_spaces,
            device: device.clone(),
            dtype,
        })
    }

    /// The prompt's ids, split around the image as `input_embeds` splits them.
    pub fn prompt_ids(&self, request: &Request) -> Result<PromptIds> {
        let text = prompt(request);
        let pieces: Vec<&str> = text.split("<image>").collect();
        let [before, after] = pieces.as_slice() else {
            return Err(Error::request(format!(
                "the conversation contains the text `<image>` {} times (moondream2 expects it once, where the image goes; remove it from the questions)",
                pieces.len() - 2
            )));
        };
        let ids = |s: &str| -> Result<Vec<u32>> {
            Ok(self
                .tokenizer
                .encode(s, false)
                .map_err(|source| Error::Tokenize {
                    what: "the prompt",
                    source,
                })?
                .get_ids()
                .to_vec())
        };
        Ok(PromptIds {
            bos: self.bos,
            before_image: ids(&format!("{before}<image>"))?,
            after_image: ids(&format!("</image>{after}"))?,
        })
    }

    /// The image embeddings, `[1, 729, hidden]`.
    pub fn image_embeds(&self, img: &RgbImage) -> Result<Tensor> {
        let err = Error::tensor("the vision encoder failed");
        let px = Tensor::from_vec(pixels(img), (1, 3, SIDE, SIDE), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(&err)?;
        self.model.encode_image(&px).map_err(err)
    }
}

impl Vlm for Moondream {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let image = request
            .messages
            .iter()
            .flat_map(|m| m.images.iter())
            .next()
            .ok_or_else(|| {
                Error::request(
                    "Moondream2 needs an image (declare the model with text_only = false)",
                )
            })?;
        let img = decode_image(image)?;
        let ids = self.prompt_ids(request)?;
        let image = self.image_embeds(&img)?;
        let bos = self.model.embed(&[ids.bos])?;
        let before = self.model.embed(&ids.before_image)?;
        let after = self.model.embed(&ids.after_image)?;
        let embeds = Tensor::cat(&[&bos, &before, &image.to_dtype(bos.dtype())?, &after], 1)?;
        let prompt_tokens = embeds.dim(1)?;
        let logits = self.model.prefill(&embeds)?;
        Ok(Prefill {
            prompt_tokens,
            logits,
        })
    }

    fn step(&mut self, token: u32) -> candle_core::Result<Tensor> {
        self.model.step(token)
    }

    fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn answer_text(&self, tokens: &[u32], stop: Option<u32>) -> Result<String> {
        let mut ids = tokens.to_vec();
        ids.extend(stop);
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(Error::Detokenize)?;
        let text = if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        };
        Ok(strip_end_marker(&text))
    }
}

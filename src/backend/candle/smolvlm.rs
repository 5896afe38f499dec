//! SmolVLM and SmolVLM2 (transformers' `Idefics3ForConditionalGeneration` and
//! `SmolVLMForConditionalGeneration`): a SigLIP vision encoder ([`super::siglip`]), a
//! pixel-shuffle connector, and a Llama decoder fed with the text embeddings in which each
//! `<image>` token is replaced by one connector output.
//!
//! The processor follows the repo's `preprocessor_config.json` and `processor_config.json` as
//! transformers' `Idefics3ImageProcessor` / `Idefics3Processor` do: resize so the longest edge is
//! `size.longest_edge` (Pillow-exact, see [`crate::resample`]); with `do_image_splitting`, resize up
//! to multiples of `max_image_size.longest_edge`, cut into tiles and add the whole image resized to
//! one tile as the global image; else resize to one square tile; rescale and normalise. Each
//! `<image>` of the chat-templated prompt becomes
//! `<fake_token_around_image><row_R_col_C><image>×N ...\n` per tile row, then
//! `\n<fake_token_around_image><global-img><image>×N<fake_token_around_image>`.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use image::RgbImage;
use serde::Deserialize;

use super::llama::{Llama, LlamaConfig};
use super::quant::{Precision, QLinear, QuantSummary, Quantizer};
use super::siglip::{Act, Dims, VisionEncoder};
use super::template::ChatTemplate;
use super::{
    Checkpoint, Error, Prefill, Result, Vlm, push_chw, read_json, request_images, resize_rgb,
    splice_images,
};
use crate::backend::Request;
use crate::resample::Filter;

/// Idefics3/SmolVLM's `vision_config` (defaults: transformers' `Idefics3VisionConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "d_vhidden")]
    pub hidden_size: usize,
    #[serde(default = "d_vinter")]
    pub intermediate_size: usize,
    #[serde(default = "d_vlayers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_vheads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_chans")]
    pub num_channels: usize,
    #[serde(default = "d_vimage")]
    pub image_size: usize,
    #[serde(default = "d_vpatch")]
    pub patch_size: usize,
    #[serde(default = "d_vact")]
    pub hidden_act: String,
    #[serde(default = "d_veps")]
    pub layer_norm_eps: f64,
}

fn d_vhidden() -> usize {
    1152
}
fn d_vinter() -> usize {
    3072
}
fn d_vlayers() -> usize {
    12
}
fn d_vheads() -> usize {
    16
}
fn d_chans() -> usize {
    3
}
fn d_vimage() -> usize {
    224
}
fn d_vpatch() -> usize {
    32
}
fn d_vact() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_veps() -> f64 {
    1e-6
}
fn d_scale() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub text_config: LlamaConfig,
    pub vision_config: VisionConfig,
    #[serde(default = "d_scale")]
    pub scale_factor: usize,
    pub image_token_id: Option<u32>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct LongestEdge {
    longest_edge: usize,
}

/// `preprocessor_config.json` (defaults: transformers' `Idefics3ImageProcessor`).
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default = "yes")]
    pub do_image_splitting: bool,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "d_mean")]
    pub image_mean: Vec<f32>,
    #[serde(default = "d_mean")]
    pub image_std: Vec<f32>,
    #[serde(default = "d_resample")]
    pub resample: u32,
    #[serde(default = "d_size")]
    size: LongestEdge,
    #[serde(default = "d_max_size")]
    max_image_size: LongestEdge,
}

fn yes() -> bool {
    true
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_mean() -> Vec<f32> {
    vec![0.5, 0.5, 0.5]
}
fn d_resample() -> u32 {
    1
}
fn d_size() -> LongestEdge {
    LongestEdge {
        longest_edge: 4 * 364,
    }
}
fn d_max_size() -> LongestEdge {
    LongestEdge { longest_edge: 364 }
}

#[derive(Debug, Clone, Deserialize, Default)]
struct ProcessorConfig {
    image_seq_len: Option<usize>,
}

/// Images larger than this on a side are scaled down first (transformers' `MAX_IMAGE_SIZE`).
const MAX_IMAGE_SIZE: usize = 4096;

/// The image processor and prompt expansion.
pub struct Processor {
    pub cfg: PreprocessorConfig,
    filter: Filter,
    pub image_seq_len: usize,
}

/// One image made ready for the vision encoder.
pub struct ProcessedImage {
    /// `[tiles, 3, S, S]` as f32 values, row-major: the tiles row by row, then the global image.
    pub pixels: Vec<f32>,
    pub tiles: usize,
    pub rows: usize,
    pub cols: usize,
    pub side: usize,
}

/// `int()` of a positive f64, as Python truncates.
fn trunc(x: f64) -> usize {
    x.max(0.0) as usize
}

impl Processor {
    pub fn new(cfg: PreprocessorConfig, image_seq_len: usize) -> Result<Self> {
        let filter = Filter::from_pil(cfg.resample).ok_or_else(|| {
            Error::invalid(
                "preprocessor_config.json",
                format!(
                    "resample {} is not supported (expected 1 LANCZOS, 2 BILINEAR, 3 BICUBIC or 4 BOX)",
                    cfg.resample
                ),
            )
        })?;
        if cfg.image_mean.len() != 3 || cfg.image_std.len() != 3 {
            return Err(Error::invalid(
                "preprocessor_config.json",
                "image_mean and image_std need 3 values",
            ));
        }
        if cfg.max_image_size.longest_edge == 0 || cfg.size.longest_edge == 0 {
            return Err(Error::invalid(
                "preprocessor_config.json",
                "longest_edge must be at least 1",
            ));
        }
        Ok(Self {
            cfg,
            filter,
            image_seq_len,
        })
    }

    /// The size after resizing the longest edge to `max_len`, keeping the aspect ratio with even
    /// sides, then capping at [`MAX_IMAGE_SIZE`] (transformers' `get_resize_output_image_size`).
    fn longest_edge_size(h: usize, w: usize, max_len: usize) -> (usize, usize) {
        let aspect = w as f64 / h as f64;
        let (mut h, mut w) = if w >= h {
            let mut h = trunc(max_len as f64 / aspect);
            if !h.is_multiple_of(2) {
                h += 1;
            }
            (h, max_len)
        } else {
            let mut w = trunc(max_len as f64 * aspect);
            if !w.is_multiple_of(2) {
                w += 1;
            }
            (max_len, w)
        };
        h = h.max(1);
        w = w.max(1);
        let aspect = w as f64 / h as f64;
        if w >= h && w > MAX_IMAGE_SIZE {
            w = MAX_IMAGE_SIZE;
            h = trunc(w as f64 / aspect);
        } else if h > w && h > MAX_IMAGE_SIZE {
            h = MAX_IMAGE_SIZE;
            w = trunc(h as f64 * aspect);
        }
        (h.max(1), w.max(1))
    }

    /// Resizes, splits (unless `split` is false) and normalises one image.
    pub fn process(&self, img: &RgbImage, split: Option<bool>) -> ProcessedImage {
        let cfg = &self.cfg;
        let tile = cfg.max_image_size.longest_edge;
        let mut img = img.clone();
        if cfg.do_resize {
            let (h, w) = Self::longest_edge_size(
                img.height() as usize,
                img.width() as usize,
                cfg.size.longest_edge,
            );
            img = resize_rgb(&img, w, h, self.filter);
        }
        let mut frames = Vec::new();
        let (mut rows, mut cols) = (0, 0);
        if split.unwrap_or(cfg.do_image_splitting) {
            // Up to multiples of the tile size (transformers' `resize_for_vision_encoder`).
            let (h, w) = (img.height() as usize, img.width() as usize);
            let aspect = w as f64 / h as f64;
            let (h, w) = if w >= h {
                let w = w.div_ceil(tile) * tile;
                let h = trunc(w as f64 / aspect).div_ceil(tile) * tile;
                (h, w)
            } else {
                let h = h.div_ceil(tile) * tile;
                let w = trunc(h as f64 * aspect).div_ceil(tile) * tile;
                (h, w)
            };
            img = resize_rgb(&img, w.max(tile), h.max(tile), self.filter);
            let (h, w) = (img.height() as usize, img.width() as usize);
            if h > tile || w > tile {
                rows = h.div_ceil(tile);
                cols = w.div_ceil(tile);
                let th = h.div_ceil(rows);
                let tw = w.div_ceil(cols);
                for r in 0..rows {
                    for c in 0..cols {
                        let (x0, y0) = (c * tw, r * th);
                        let (x1, y1) = ((x0 + tw).min(w), (y0 + th).min(h));
                        let crop = image::imageops::crop_imm(
                            &img,
                            x0 as u32,
                            y0 as u32,
                            (x1 - x0) as u32,
                            (y1 - y0) as u32,
                        )
                        .to_image();
                        frames.push(crop);
                    }
                }
                img = resize_rgb(&img, tile, tile, self.filter);
            }
            frames.push(img);
        } else {
            frames.push(resize_rgb(&img, tile, tile, self.filter));
        }
        // Every frame is tile × tile here (the resize above makes the sides multiples of it).
        let mut pixels = Vec::with_capacity(frames.len() * 3 * tile * tile);
        for f in &frames {
            push_chw(
                &resize_rgb(f, tile, tile, self.filter),
                cfg.do_rescale.then_some(cfg.rescale_factor),
                cfg.do_normalize
                    .then_some((cfg.image_mean.as_slice(), cfg.image_std.as_slice())),
                &mut pixels,
            );
        }
        ProcessedImage {
            pixels,
            tiles: frames.len(),
            rows,
            cols,
            side: tile,
        }
    }

    /// The text that stands for one processed image in the prompt.
    pub(crate) fn image_prompt(&self, p: &ProcessedImage) -> String {
        let img = "<image>".repeat(self.image_seq_len);
        let fake = "<fake_token_around_image>";
        if p.rows == 0 && p.cols == 0 {
            return format!("{fake}<global-img>{img}{fake}");
        }
        let mut s = String::new();
        for r in 0..p.rows {
            for c in 0..p.cols {
                s.push_str(&format!("{fake}<row_{}_col_{}>{img}", r + 1, c + 1));
            }
            s.push('\n');
        }
        s.push_str(&format!("\n{fake}<global-img>{img}{fake}"));
        s
    }
}

/// A prompt ready for the model.
pub struct Encoded {
    pub text: String,
    pub ids: Vec<u32>,
    /// All images' tiles in prompt order, `[n, 3, S, S]`.
    pub pixels: Option<Tensor>,
}

/// Where the last prefill spent its time (for benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefillTimes {
    /// Chat template, image processing and tokenization.
    pub preprocess_s: f64,
    /// Vision encoder and connector.
    pub vision_s: f64,
    /// The text model over the whole prompt.
    pub text_s: f64,
}

/// Tiles run through the vision encoder at once. One at a time costs no speed (a tile is already
/// 1024 patches: the products stay large) and keeps the attention scores small: 12 heads ×
/// 1024² f32 is 50 MB per tile for SmolVLM-256M, times the number of tiles if batched.
const VISION_BATCH: usize = 1;

pub struct SmolVlm {
    pub processor: Processor,
    pub last_prefill: PrefillTimes,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    vision: VisionEncoder,
    proj: QLinear,
    scale: usize,
    text: Llama,
    image_token: u32,
    eos: Vec<u32>,
    device: Device,
    dtype: DType,
    quantization: Option<QuantSummary>,
}

impl SmolVlm {
    /// Loads the model at `precision`: a dtype, or (quantized) every linear layer of the
    /// vision encoder, the connector and the decoder ([`super::quant`]).
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: &Device) -> Result<Self> {
        let precision = precision.into();
        let dtype = precision.dtype;
        let q = Quantizer::new(precision.quant);
        let cfg: Config = read_json(dir, "config.json")?;
        let mut text_cfg = cfg.text_config.clone();
        text_cfg.tie_word_embeddings |= cfg.tie_word_embeddings;
        text_cfg.check()?;
        let pre: PreprocessorConfig = read_json(dir, "preprocessor_config.json")?;
        let proc_cfg: ProcessorConfig = if dir.join("processor_config.json").is_file() {
            read_json(dir, "processor_config.json")?
        } else {
            ProcessorConfig::default()
        };
        let v = &cfg.vision_config;
        super::check_sizes(
            "config.json",
            &[
                ("vision_config.hidden_size", v.hidden_size),
                ("vision_config.intermediate_size", v.intermediate_size),
                ("vision_config.num_hidden_layers", v.num_hidden_layers),
                ("vision_config.num_attention_heads", v.num_attention_heads),
                ("vision_config.image_size", v.image_size),
                ("vision_config.patch_size", v.patch_size),
            ],
        )?;
        super::check_sizes("config.json", &[("scale_factor", cfg.scale_factor)])?;
        if v.image_size != pre.max_image_size.longest_edge {
            return Err(Error::unsupported(format!(
                "vision_config.image_size {} differs from preprocessor_config.json's max_image_size.longest_edge {}",
                v.image_size, pre.max_image_size.longest_edge
            )));
        }
        let patches = (v.image_size / v.patch_size.max(1)).pow(2);
        let derived = patches / cfg.scale_factor.pow(2).max(1);
        let image_seq_len = proc_cfg.image_seq_len.unwrap_or(derived);
        if image_seq_len != derived {
            return Err(Error::invalid(
                "processor_config.json",
                format!(
                    "image_seq_len {image_seq_len} differs from (image_size / patch_size)² / scale_factor² = {derived}"
                ),
            ));
        }
        let processor = Processor::new(pre, image_seq_len)?;
        let ckpt = Checkpoint::open(dir, dtype, device)?;
        let template = ChatTemplate::load(dir)?;
        let image_token = ckpt.image_token("image_token_id", cfg.image_token_id, "<image>")?;
        let eos = ckpt.stop_tokens()?;
        let dims = Dims {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            channels: v.num_channels,
            image_size: v.image_size,
            patch: v.patch_size,
            eps: v.layer_norm_eps,
            act: Act::parse(&v.hidden_act)?,
        };
        if !v.hidden_size.is_multiple_of(v.num_attention_heads.max(1)) {
            return Err(Error::unsupported(format!(
                "vision_config: hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            )));
        }
        let vb = &ckpt.vb;
        let weights = ckpt.weights_error();
        let vision =
            VisionEncoder::load(&dims, vb.pp("model.vision_model"), &q).map_err(&weights)?;
        let proj = q
            .linear(
                v.hidden_size * cfg.scale_factor.pow(2),
                text_cfg.hidden_size,
                false,
                vb.pp("model.connector.modality_projection.proj"),
            )
            .map_err(&weights)?;
        let text = Llama::load(&text_cfg, vb.pp("model.text_model"), vb.pp("lm_head"), &q)
            .map_err(&weights)?;
        Ok(Self {
            processor,
            last_prefill: PrefillTimes::default(),
            tokenizer: ckpt.tokenizer,
            template,
            vision,
            proj,
            scale: cfg.scale_factor,
            text,
            image_token,
            eos,
            device: device.clone(),
            dtype,
            quantization: q.finish(&format!("smolvlm {}", dir.display())),
        })
    }

    /// Expands each `<image>` of an already templated prompt and tokenizes it, as the processor
    /// does (`split` overrides `do_image_splitting`).
    pub fn encode(
        &self,
        prompt: &str,
        images: &[RgbImage],
        split: Option<bool>,
    ) -> Result<Encoded> {
        let (text, processed) = super::prompt::expand_images(prompt, images, |img| {
            let p = self.processor.process(img, split);
            (self.processor.image_prompt(&p), p)
        })?;
        let mut pixels = Vec::new();
        let mut tiles = 0;
        for p in processed {
            tiles += p.tiles;
            pixels.extend(p.pixels);
        }
        let enc = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|source| Error::Tokenize {
                what: "the prompt",
                source,
            })?;
        let side = self.processor.cfg.max_image_size.longest_edge;
        let pixels = if tiles == 0 {
            None
        } else {
            Some(
                Tensor::from_vec(pixels, (tiles, 3, side, side), &self.device)
                    .and_then(|t| t.to_dtype(self.dtype))
                    .map_err(Error::tensor("cannot build the pixel tensor"))?,
            )
        };
        Ok(Encoded {
            text,
            ids: enc.get_ids().to_vec(),
            pixels,
        })
    }

    /// The connector: pixel shuffle (`scale`² neighbouring patches into one vector) and the
    /// projection into the text model's width.
    fn connector(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, seq, d) = x.dims3()?;
        let s = self.scale;
        let side = (seq as f64).sqrt() as usize;
        let x = x
            .reshape((b, side, side / s, d * s))?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((b, side / s, side / s, d * s * s))?
            .permute((0, 2, 1, 3))?
            .contiguous()?
            .reshape((b, seq / (s * s), d * s * s))?;
        self.proj.forward(&x)
    }

    /// Runs an encoded prompt from an empty cache; returns the logits after it.
    pub fn prefill_encoded(&mut self, enc: &Encoded) -> Result<Tensor> {
        self.text.reset();
        self.last_prefill.vision_s = 0.0;
        let ids = Tensor::new(enc.ids.as_slice(), &self.device)?;
        let embeds = self.text.embed(&ids)?;
        let feats = match &enc.pixels {
            None => None,
            Some(px) => {
                let start = std::time::Instant::now();
                let tiles = px.dim(0)?;
                let mut chunks = Vec::new();
                for first in (0..tiles).step_by(VISION_BATCH) {
                    let n = VISION_BATCH.min(tiles - first);
                    let f = px
                        .narrow(0, first, n)
                        .and_then(|p| self.vision.forward(&p))
                        .and_then(|f| self.connector(&f))?;
                    chunks.push(f);
                }
                let feats = Tensor::cat(&chunks, 0).and_then(|f| f.flatten_to(1))?;
                self.last_prefill.vision_s = start.elapsed().as_secs_f64();
                Some(feats)
            }
        };
        let embeds = splice_images(&embeds, &enc.ids, self.image_token, feats)?.unsqueeze(0)?;
        let start = std::time::Instant::now();
        let logits = self.text.forward_embeds(&embeds)?;
        self.last_prefill.text_s = start.elapsed().as_secs_f64();
        Ok(logits)
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

impl Vlm for SmolVlm {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let start = std::time::Instant::now();
        let prompt = self
            .template
            .render(&ChatTemplate::messages(request), true)?;
        let images = request_images(request)?;
        let enc = self.encode(&prompt, &images, None)?;
        let preprocess_s = start.elapsed().as_secs_f64();
        let logits = self.prefill_encoded(&enc)?;
        self.last_prefill.preprocess_s = preprocess_s;
        Ok(Prefill {
            prompt_tokens: enc.ids.len(),
            logits,
        })
    }

    fn step(&mut self, token: u32) -> candle_core::Result<Tensor> {
        self.text.forward_token(token)
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

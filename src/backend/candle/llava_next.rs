//! LLaVA-NeXT / LLaVA-1.6 (transformers' `LlavaNextForConditionalGeneration`, e.g.
//! llava-hf/llava-v1.6-mistral-7b-hf): candle-transformers' CLIP vision transformer, a
//! linear-GELU-linear projector, and a Mistral/Llama decoder ([`super::llama`]).
//!
//! The processor follows `LlavaNextImageProcessor` ("anyres"): pick the grid resolution from
//! `image_grid_pinpoints` that keeps most of the image, resize into it keeping the aspect ratio,
//! pad to it with black, cut it into `crop_size` tiles, and put the whole image resized to one
//! tile first; each tile is resized/centre-cropped and normalised with the CLIP mean and std.
//! The model packs the tile features back into a grid, removes the rows or columns that are
//! padding, and ends each row with the learned `image_newline`; the processor's count of
//! `<image>` tokens is computed the same way.
//!
//! candle-transformers' own `llava::LLaVA` is not used: its CLIP hidden-state list is offset by
//! one layer from transformers' (`vision_feature_layer = -2` picks the last layer there), its
//! Llama loader panics on a missing tensor, and it has no anyres processor.
//!
//! Quantized (`dtype = "q8_0"` / `"q4k"`, [`super::quant`]): the decoder and the projector; the
//! CLIP tower (candle-transformers') stays f32.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::models::clip::text_model::Activation as ClipActivation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use image::RgbImage;
use serde::Deserialize;

use super::llama::{Llama, LlamaConfig};
use super::quant::{Precision, QLinear, QuantSummary, Quantizer};
use super::template::ChatTemplate;
use super::{
    Checkpoint, Error, Prefill, Result, Vlm, push_chw, read_json, request_images, resize_rgb,
    splice_images,
};
use crate::backend::Request;
use crate::resample::Filter;

#[derive(Debug, Clone, Deserialize)]
struct VisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "d_three")]
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "d_quick")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    projection_dim: Option<usize>,
}

fn d_three() -> usize {
    3
}
fn d_quick() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_layer() -> i64 {
    -2
}
fn d_strategy() -> String {
    "default".into()
}
fn d_act() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    text_config: LlamaConfig,
    vision_config: VisionConfig,
    image_grid_pinpoints: Vec<[usize; 2]>,
    #[serde(default = "d_layer")]
    vision_feature_layer: i64,
    #[serde(default = "d_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "d_act")]
    projector_hidden_act: String,
    #[serde(default = "yes")]
    multimodal_projector_bias: bool,
    image_token_index: Option<u32>,
    #[serde(default)]
    tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Edge {
    shortest_edge: Option<usize>,
    height: Option<usize>,
    width: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "yes")]
    do_center_crop: bool,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "yes")]
    do_pad: bool,
    #[serde(default = "d_rescale")]
    rescale_factor: f64,
    image_mean: Vec<f32>,
    image_std: Vec<f32>,
    #[serde(default = "d_resample")]
    resample: u32,
    size: Edge,
    crop_size: Edge,
    image_grid_pinpoints: Option<Vec<[usize; 2]>>,
}

fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_resample() -> u32 {
    3
}

/// Python's `int(round(x, 7))`.
fn round7_trunc(x: f64) -> usize {
    ((x * 1e7).round_ties_even() / 1e7).max(0.0) as usize
}

/// transformers' `select_best_resolution`: the `(height, width)` that keeps most of the image,
/// then wastes least.
pub fn select_best_resolution(h: usize, w: usize, pinpoints: &[[usize; 2]]) -> (usize, usize) {
    let mut best = (pinpoints[0][0], pinpoints[0][1]);
    let mut max_effective = 0usize;
    let mut min_wasted = usize::MAX;
    for &[ph, pw] in pinpoints {
        let scale = (pw as f64 / w as f64).min(ph as f64 / h as f64);
        let dw = (w as f64 * scale) as usize;
        let dh = (h as f64 * scale) as usize;
        let effective = (dw * dh).min(w * h);
        let wasted = ph * pw - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (ph, pw);
        }
    }
    best
}

/// The size inside `target` that keeps the aspect ratio (`_get_patch_output_size`).
fn fit_inside(h: usize, w: usize, target: (usize, usize)) -> (usize, usize) {
    let (th, tw) = target;
    let sw = tw as f64 / w as f64;
    let sh = th as f64 / h as f64;
    if sw < sh {
        (((h as f64 * sw).ceil() as usize).min(th), tw)
    } else {
        (th, ((w as f64 * sh).ceil() as usize).min(tw))
    }
}

/// Rows and columns of the feature grid that remain after the padding is removed, given the
/// original image and the grid's size in patches (`unpad_image` / `_get_unpadded_features`):
/// returns (first row, rows, first column, columns).
fn unpadded(h: usize, w: usize, grid_h: usize, grid_w: usize) -> (usize, usize, usize, usize) {
    let original = w as f64 / h as f64;
    let current = grid_w as f64 / grid_h as f64;
    if original > current {
        let new_h = round7_trunc(h as f64 * (grid_w as f64 / w as f64));
        let pad = (grid_h - new_h.min(grid_h)) / 2;
        (pad, grid_h - 2 * pad, 0, grid_w)
    } else {
        let new_w = round7_trunc(w as f64 * (grid_h as f64 / h as f64));
        let pad = (grid_w - new_w.min(grid_w)) / 2;
        (0, grid_h, pad, grid_w - 2 * pad)
    }
}

/// One image made ready: `[1 + tiles, 3, S, S]` values, the grid, the original size.
pub struct ProcessedImage {
    pub pixels: Vec<f32>,
    pub count: usize,
    pub grid: (usize, usize),
    pub original: (usize, usize),
    pub tokens: usize,
}

pub struct LlavaNext {
    pre: PreprocessorConfig,
    filter: Filter,
    pinpoints: Vec<[usize; 2]>,
    tile: usize,
    resize_to: usize,
    patches_per_side: usize,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    vision: ClipVisionTransformer,
    feature_layer: usize,
    keep_cls: bool,
    proj1: QLinear,
    proj2: QLinear,
    gelu_exact: bool,
    newline: Tensor,
    text: Llama,
    image_token: u32,
    eos: Vec<u32>,
    device: Device,
    dtype: DType,
    quantization: Option<QuantSummary>,
}

/// A prompt ready for the model.
pub struct Encoded {
    pub text: String,
    pub ids: Vec<u32>,
    pub images: Vec<ProcessedImage>,
}

impl LlavaNext {
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: &Device) -> Result<Self> {
        let precision = precision.into();
        let dtype = precision.dtype;
        let q = Quantizer::new(precision.quant);
        let cfg: Config = read_json(dir, "config.json")?;
        let mut text_cfg = cfg.text_config.clone();
        text_cfg.tie_word_embeddings |= cfg.tie_word_embeddings;
        text_cfg.check()?;
        let pre: PreprocessorConfig = read_json(dir, "preprocessor_config.json")?;
        let filter = Filter::from_pil(pre.resample).ok_or_else(|| {
            Error::invalid(
                "preprocessor_config.json",
                format!("resample {} is not supported", pre.resample),
            )
        })?;
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
        if v.hidden_act != "quick_gelu" || (v.layer_norm_eps - 1e-5).abs() > 1e-12 {
            return Err(Error::unsupported(format!(
                "vision_config: candle's CLIP supports hidden_act quick_gelu with layer_norm_eps 1e-5, got {} and {}",
                v.hidden_act, v.layer_norm_eps
            )));
        }
        let tile = pre
            .crop_size
            .height
            .or(pre.crop_size.shortest_edge)
            .unwrap_or(v.image_size);
        let resize_to = pre
            .size
            .shortest_edge
            .or(pre.size.height)
            .unwrap_or(v.image_size);
        if tile != v.image_size || pre.crop_size.width.is_some_and(|w| w != tile) {
            return Err(Error::invalid(
                "preprocessor_config.json",
                format!(
                    "crop_size {tile} differs from vision_config.image_size {}",
                    v.image_size
                ),
            ));
        }
        let layers = v.num_hidden_layers as i64;
        let layer = if cfg.vision_feature_layer < 0 {
            layers + 1 + cfg.vision_feature_layer
        } else {
            cfg.vision_feature_layer
        };
        if layer < 1 || layer > layers {
            return Err(Error::unsupported(format!(
                "vision_feature_layer {} is not supported (expected the output of one of the {layers} layers)",
                cfg.vision_feature_layer
            )));
        }
        let keep_cls = match cfg.vision_feature_select_strategy.as_str() {
            "default" => false,
            "full" => true,
            other => {
                return Err(Error::unsupported(format!(
                    "vision_feature_select_strategy `{other}` is not supported (default, full)"
                )));
            }
        };
        let gelu_exact = match cfg.projector_hidden_act.as_str() {
            "gelu" => true,
            "gelu_pytorch_tanh" => false,
            other => {
                return Err(Error::unsupported(format!(
                    "projector_hidden_act `{other}` is not supported"
                )));
            }
        };
        let ckpt = Checkpoint::open(dir, dtype, device)?;
        let template = ChatTemplate::load(dir)?;
        let image_token =
            ckpt.image_token("image_token_index", cfg.image_token_index, "<image>")?;
        let eos = ckpt.stop_tokens()?;
        let clip = ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: ClipActivation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: v.projection_dim.unwrap_or(v.hidden_size),
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        };
        let vb = &ckpt.vb;
        let weights = ckpt.weights_error();
        let vision = ClipVisionTransformer::new(vb.pp("vision_tower.vision_model"), &clip)
            .map_err(&weights)?;
        let h = text_cfg.hidden_size;
        let lin = |i, o, name: &str| q.linear(i, o, cfg.multimodal_projector_bias, vb.pp(name));
        let proj1 = lin(v.hidden_size, h, "multi_modal_projector.linear_1").map_err(&weights)?;
        let proj2 = lin(h, h, "multi_modal_projector.linear_2").map_err(&weights)?;
        let newline = vb.get(h, "image_newline").map_err(&weights)?;
        let text = Llama::load(
            &text_cfg,
            vb.pp("language_model.model"),
            vb.pp("language_model.lm_head"),
            &q,
        )
        .map_err(&weights)?;
        let pinpoints = pre
            .image_grid_pinpoints
            .clone()
            .unwrap_or_else(|| cfg.image_grid_pinpoints.clone());
        if pinpoints.is_empty() || pinpoints.iter().any(|p| p[0] == 0 || p[1] == 0) {
            return Err(Error::unsupported(
                "image_grid_pinpoints must list (height, width) pairs",
            ));
        }
        Ok(Self {
            pre,
            filter,
            pinpoints,
            tile,
            resize_to,
            patches_per_side: v.image_size / v.patch_size,
            tokenizer: ckpt.tokenizer,
            template,
            vision,
            feature_layer: layer as usize,
            keep_cls,
            proj1,
            proj2,
            gelu_exact,
            newline,
            text,
            image_token,
            eos,
            device: device.clone(),
            dtype,
            quantization: q.finish(&format!("llava-next {}", dir.display())),
        })
    }

    /// `_preprocess` of one tile: resize, centre crop, rescale, normalise.
    fn push_tile(&self, img: &RgbImage, out: &mut Vec<f32>) {
        let mut img = img.clone();
        if self.pre.do_resize {
            // shortest edge to `resize_to`, keeping the aspect ratio.
            let (w, h) = (img.width() as usize, img.height() as usize);
            let (nw, nh) = if w <= h {
                (
                    self.resize_to,
                    (self.resize_to as f64 * h as f64 / w as f64) as usize,
                )
            } else {
                (
                    (self.resize_to as f64 * w as f64 / h as f64) as usize,
                    self.resize_to,
                )
            };
            img = resize_rgb(&img, nw, nh, self.filter);
        }
        if self.pre.do_center_crop {
            let (w, h) = (img.width() as usize, img.height() as usize);
            let c = self.tile;
            if (w, h) != (c, c) && w >= c && h >= c {
                let top = (h - c) / 2;
                let left = (w - c) / 2;
                img = image::imageops::crop_imm(&img, left as u32, top as u32, c as u32, c as u32)
                    .to_image();
            }
        }
        push_chw(
            &resize_rgb(&img, self.tile, self.tile, self.filter),
            self.pre.do_rescale.then_some(self.pre.rescale_factor),
            self.pre.do_normalize.then_some((
                self.pre.image_mean.as_slice(),
                self.pre.image_std.as_slice(),
            )),
            out,
        );
    }

    /// The anyres processing of one image, with the number of `<image>` tokens it becomes.
    pub fn process(&self, img: &RgbImage) -> ProcessedImage {
        let (h, w) = (img.height() as usize, img.width() as usize);
        let best = select_best_resolution(h, w, &self.pinpoints);
        let (nh, nw) = fit_inside(h, w, best);
        let fitted = resize_rgb(img, nw, nh, self.filter);
        let (bh, bw) = best;
        let mut canvas = RgbImage::new(bw as u32, bh as u32);
        let (py, px) = if self.pre.do_pad {
            ((bh - nh) / 2, (bw - nw) / 2)
        } else {
            (0, 0)
        };
        image::imageops::replace(&mut canvas, &fitted, px as i64, py as i64);
        let mut pixels = Vec::new();
        let base = resize_rgb(img, self.resize_to, self.resize_to, self.filter);
        self.push_tile(&base, &mut pixels);
        let (rows, cols) = (bh / self.tile, bw / self.tile);
        for r in 0..rows {
            for c in 0..cols {
                let t = image::imageops::crop_imm(
                    &canvas,
                    (c * self.tile) as u32,
                    (r * self.tile) as u32,
                    self.tile as u32,
                    self.tile as u32,
                )
                .to_image();
                self.push_tile(&t, &mut pixels);
            }
        }
        let p = self.patches_per_side;
        let (_, uh, _, uw) = unpadded(h, w, rows * p, cols * p);
        let base_tokens = p * p + usize::from(self.keep_cls);
        ProcessedImage {
            pixels,
            count: 1 + rows * cols,
            grid: (rows, cols),
            original: (h, w),
            tokens: base_tokens + uh * uw + uh,
        }
    }

    /// Expands each `<image>` of a templated prompt and tokenizes it (with `<s>`).
    pub fn encode(&self, prompt: &str, images: &[RgbImage]) -> Result<Encoded> {
        let (text, processed) = super::prompt::expand_images(prompt, images, |img| {
            let p = self.process(img);
            (super::prompt::IMAGE.repeat(p.tokens), p)
        })?;
        let enc = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|source| Error::Tokenize {
                what: "the prompt",
                source,
            })?;
        Ok(Encoded {
            text,
            ids: enc.get_ids().to_vec(),
            images: processed,
        })
    }

    /// The features of one processed image, in prompt order: `[tokens, hidden]`.
    fn image_features(&self, p: &ProcessedImage) -> candle_core::Result<Tensor> {
        let s = self.tile;
        let px = Tensor::from_vec(p.pixels.clone(), (p.count, 3, s, s), &self.device)?
            .to_dtype(self.dtype)?;
        let states = self.vision.output_hidden_states(&px)?;
        // candle's list holds each layer's output (then the pooled output): layer k is k - 1.
        let mut f = states[self.feature_layer - 1].clone();
        if !self.keep_cls {
            f = f.i((.., 1..))?;
        }
        let f = self.proj1.forward(&f)?;
        let f = if self.gelu_exact {
            f.gelu_erf()?
        } else {
            f.gelu()?
        };
        let f = self.proj2.forward(&f)?; // [count, n, h]
        let base = f.i(0)?;
        if p.count == 1 {
            return Tensor::cat(&[base, self.newline.unsqueeze(0)?], 0);
        }
        let (rows, cols) = p.grid;
        let side = self.patches_per_side;
        let hd = f.dim(2)?;
        // [rows, cols, side, side, h] -> [h, rows*side, cols*side]
        let grid = f
            .i(1..)?
            .reshape((rows, cols, side, side, hd))?
            .permute((4, 0, 2, 1, 3))?
            .contiguous()?
            .reshape((hd, rows * side, cols * side))?;
        let (r0, nr, c0, nc) = unpadded(p.original.0, p.original.1, rows * side, cols * side);
        let grid = grid.narrow(1, r0, nr)?.narrow(2, c0, nc)?;
        let newline = self
            .newline
            .reshape((hd, 1, 1))?
            .broadcast_as((hd, nr, 1))?;
        let grid = Tensor::cat(&[grid, newline], 2)?; // [h, nr, nc + 1]
        let grid = grid.flatten_from(1)?.t()?; // [nr * (nc + 1), h]
        Tensor::cat(&[base, grid], 0)
    }

    /// Runs an encoded prompt from an empty cache; returns the logits after it.
    pub fn prefill_encoded(&mut self, enc: &Encoded) -> Result<Tensor> {
        self.text.reset();
        let ids = Tensor::new(enc.ids.as_slice(), &self.device)?;
        let embeds = self.text.embed(&ids)?;
        let feats = if enc.images.is_empty() {
            None
        } else {
            let feats = enc
                .images
                .iter()
                .map(|p| self.image_features(p))
                .collect::<candle_core::Result<Vec<_>>>()
                .and_then(|f| Tensor::cat(&f, 0))?;
            Some(feats)
        };
        let embeds = splice_images(&embeds, &enc.ids, self.image_token, feats)?;
        Ok(self.text.forward_embeds(&embeds.unsqueeze(0)?)?)
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

impl Vlm for LlavaNext {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let prompt = self
            .template
            .render(&ChatTemplate::messages(request), true)?;
        let images = request_images(request)?;
        let enc = self.encode(&prompt, &images)?;
        let logits = self.prefill_encoded(&enc)?;
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

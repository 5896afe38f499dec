//! PaliGemma (transformers' `PaliGemmaForConditionalGeneration`): a SigLIP vision tower
//! ([`super::siglip`]; the config is read as candle-transformers' `siglip::VisionConfig`) and
//! candle-transformers' `gemma` decoder.
//!
//! candle-transformers' own `paligemma::Model` L2-normalises the image features, which transformers
//! does not do (it divides them by √hidden, which Gemma's embedding scale then undoes), so its
//! logits differ from transformers'; this file assembles the same pieces the way transformers does.
//!
//! PaliGemma has no chat template: the processor builds
//! `<image>×(N per image) <bos> PROMPT \n`, and the whole prefix attends both ways (prefix-LM),
//! which is what a prefill without a causal mask computes. The prompt is the conversation's last
//! user message (PaliGemma is not a chat model: earlier turns are not part of its prompt); every
//! image of the conversation is shown.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Linear;
use candle_transformers::models::{gemma, siglip};

use super::siglip::{Act, Dims, VisionEncoder};
use image::RgbImage;
use serde::Deserialize;

use super::{
    Checkpoint, Error, Prefill, Result, Vlm, push_chw, read_json, request_images, resize_rgb,
    splice_images,
};
use crate::backend::Request;
use crate::resample::Filter;

#[derive(Debug, Clone, Deserialize)]
struct Config {
    text_config: serde_json::Value,
    vision_config: siglip::VisionConfig,
    projection_dim: Option<usize>,
    image_token_index: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
struct Size {
    height: usize,
    width: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "d_rescale")]
    rescale_factor: f64,
    #[serde(default = "d_half")]
    image_mean: Vec<f32>,
    #[serde(default = "d_half")]
    image_std: Vec<f32>,
    #[serde(default = "d_resample")]
    resample: u32,
    size: Size,
    image_seq_length: Option<usize>,
}

fn yes() -> bool {
    true
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_half() -> Vec<f32> {
    vec![0.5, 0.5, 0.5]
}
fn d_resample() -> u32 {
    3
}

pub struct PaliGemma {
    pre: PreprocessorConfig,
    filter: Filter,
    seq_len: usize,
    tokenizer: tokenizers::Tokenizer,
    vision: VisionEncoder,
    proj: Linear,
    text: gemma::Model,
    hidden: usize,
    image_token: u32,
    bos: String,
    eos: Vec<u32>,
    pos: usize,
    device: Device,
    dtype: DType,
}

/// A prompt ready for the model.
pub struct Encoded {
    pub text: String,
    pub ids: Vec<u32>,
    /// `[images, 3, H, W]`.
    pub pixels: Option<Tensor>,
}

impl PaliGemma {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: Config = read_json(dir, "config.json")?;
        let mut tc = cfg.text_config.clone();
        if let Some(o) = tc.as_object_mut() {
            // transformers writes both; candle's Gemma wants one.
            if o.contains_key("hidden_activation") {
                o.remove("hidden_act");
            }
            if !o.contains_key("rope_theta") {
                let theta = o
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .cloned()
                    .unwrap_or(serde_json::json!(10000.0));
                o.insert("rope_theta".into(), theta);
            }
            // The real repos' text_config leaves out what equals transformers' GemmaConfig
            // defaults; candle's Gemma config needs every key.
            let defaults = [
                ("hidden_size", serde_json::json!(2048)),
                ("intermediate_size", serde_json::json!(16384)),
                ("num_hidden_layers", serde_json::json!(18)),
                ("num_attention_heads", serde_json::json!(8)),
                ("num_key_value_heads", serde_json::json!(1)),
                ("head_dim", serde_json::json!(256)),
                ("rms_norm_eps", serde_json::json!(1e-6)),
                ("attention_bias", serde_json::json!(false)),
                ("vocab_size", serde_json::json!(257216)),
                ("max_position_embeddings", serde_json::json!(8192)),
            ];
            for (k, v) in defaults {
                o.entry(k).or_insert(v);
            }
            if !o.contains_key("hidden_act") && !o.contains_key("hidden_activation") {
                o.insert(
                    "hidden_activation".into(),
                    serde_json::json!("gelu_pytorch_tanh"),
                );
            }
        }
        let text_cfg: gemma::Config = serde_json::from_value(tc)
            .map_err(|e| Error::invalid("config.json", format!("text_config: {e}")))?;
        super::check_sizes(
            "config.json",
            &[
                ("text_config.vocab_size", text_cfg.vocab_size),
                ("text_config.hidden_size", text_cfg.hidden_size),
                ("text_config.intermediate_size", text_cfg.intermediate_size),
                ("text_config.num_hidden_layers", text_cfg.num_hidden_layers),
                (
                    "text_config.num_attention_heads",
                    text_cfg.num_attention_heads,
                ),
                (
                    "text_config.num_key_value_heads",
                    text_cfg.num_key_value_heads,
                ),
                ("text_config.head_dim", text_cfg.head_dim),
            ],
        )?;
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
        let patches = (v.image_size / v.patch_size).pow(2);
        let seq_len = pre.image_seq_length.unwrap_or(patches);
        if seq_len != patches || pre.size.height != v.image_size || pre.size.width != v.image_size {
            return Err(Error::unsupported(format!(
                "preprocessor_config.json (size {}x{}, image_seq_length {seq_len}) does not match vision_config (image_size {}, {patches} patches)",
                pre.size.width, pre.size.height, v.image_size
            )));
        }
        let ckpt = Checkpoint::open(dir, dtype, device)?;
        let image_token =
            ckpt.image_token("image_token_index", cfg.image_token_index, "<image>")?;
        let bos = ckpt
            .tokenizer
            .id_to_token(2)
            .filter(|t| t == "<bos>")
            .unwrap_or_else(|| "<bos>".into());
        let eos = ckpt.stop_tokens()?;
        let vb = &ckpt.vb;
        let weights = ckpt.weights_error();
        let act = match v.hidden_act {
            candle_nn::Activation::GeluPytorchTanh => Act::GeluTanh,
            candle_nn::Activation::Gelu => Act::Gelu,
            other => {
                return Err(Error::unsupported(format!(
                    "vision_config.hidden_act {other:?} is not supported"
                )));
            }
        };
        let dims = Dims {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            channels: v.num_channels,
            image_size: v.image_size,
            patch: v.patch_size,
            eps: v.layer_norm_eps,
            act,
        };
        let vision = VisionEncoder::load(
            &dims,
            vb.pp("vision_tower.vision_model"),
            &super::quant::Quantizer::dense(),
        )
        .map_err(&weights)?;
        let proj = candle_nn::linear(
            v.hidden_size,
            cfg.projection_dim.unwrap_or(text_cfg.hidden_size),
            vb.pp("multi_modal_projector.linear"),
        )
        .map_err(&weights)?;
        let text =
            gemma::Model::new(false, &text_cfg, vb.pp("language_model")).map_err(&weights)?;
        Ok(Self {
            pre,
            filter,
            seq_len,
            tokenizer: ckpt.tokenizer,
            vision,
            proj,
            text,
            hidden: text_cfg.hidden_size,
            image_token,
            bos,
            eos,
            pos: 0,
            device: device.clone(),
            dtype,
        })
    }

    /// Resizes to the model's square and normalises: `[3, H, W]` values.
    pub fn pixels(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (self.pre.size.width, self.pre.size.height);
        let resized;
        let img = if self.pre.do_resize {
            resized = resize_rgb(img, w, h, self.filter);
            &resized
        } else {
            img
        };
        let mut out = Vec::new();
        push_chw(
            img,
            self.pre.do_rescale.then_some(self.pre.rescale_factor),
            self.pre.do_normalize.then_some((
                self.pre.image_mean.as_slice(),
                self.pre.image_std.as_slice(),
            )),
            &mut out,
        );
        out
    }

    /// The processor: image tokens, `<bos>`, the prompt and a newline.
    pub fn encode(&self, prompt: &str, images: &[RgbImage]) -> Result<Encoded> {
        let text = format!(
            "{}{}{prompt}\n",
            "<image>".repeat(self.seq_len * images.len()),
            self.bos
        );
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|source| Error::Tokenize {
                what: "the prompt",
                source,
            })?;
        let pixels = if images.is_empty() {
            None
        } else {
            let (w, h) = (self.pre.size.width, self.pre.size.height);
            let data: Vec<f32> = images.iter().flat_map(|i| self.pixels(i)).collect();
            Some(
                Tensor::from_vec(data, (images.len(), 3, h, w), &self.device)
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

    /// Runs an encoded prompt from an empty cache; returns the logits after it.
    pub fn prefill_encoded(&mut self, enc: &Encoded) -> Result<Tensor> {
        self.text.clear_kv_cache();
        let n = enc.ids.len();
        let ids = Tensor::new(enc.ids.as_slice(), &self.device)?;
        let embeds = self.text.embed_tokens().forward(&ids)?;
        // transformers divides the image features by √hidden; Gemma then multiplies every input
        // embedding, text and image alike, by √hidden.
        let feats = match &enc.pixels {
            None => None,
            Some(px) => Some(
                self.vision
                    .forward(px)
                    .and_then(|f| self.proj.forward(&f))
                    .and_then(|f| f / (self.hidden as f64).sqrt())
                    .and_then(|f| f.flatten_to(1))?,
            ),
        };
        let embeds = splice_images(&embeds, &enc.ids, self.image_token, feats)?;
        let logits = self.text.forward_embeds(&embeds.unsqueeze(0)?, None, 0)?;
        self.pos = n;
        Ok(logits.flatten_all().and_then(|l| l.to_dtype(DType::F32))?)
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

impl Vlm for PaliGemma {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let prompt = request.last_question().to_string();
        let images = request_images(request)?;
        if images.is_empty() {
            return Err(Error::request(
                "PaliGemma needs an image (declare the model with text_only = false)",
            ));
        }
        let enc = self.encode(&prompt, &images)?;
        let logits = self.prefill_encoded(&enc)?;
        Ok(Prefill {
            prompt_tokens: enc.ids.len(),
            logits,
        })
    }

    fn step(&mut self, token: u32) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(&[[token]], &self.device)?;
        let logits = self.text.forward(&ids, self.pos)?;
        self.pos += 1;
        logits.i((0, 0))?.to_dtype(DType::F32)
    }

    fn eos(&self) -> &[u32] {
        &self.eos
    }

    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

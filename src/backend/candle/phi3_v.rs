//! Phi-3.5-Vision-Instruct (`Phi3VForCausalLM`, microsoft/Phi-3.5-vision-instruct), ported from
//! Microsoft's remote code in that Hub repo: `modeling_phi3_v.py`, `image_embedding_phi3_v.py`,
//! `processing_phi3_v.py` and `image_processing_phi3_v.py` (the copies read, with their hashes,
//! are named in tests/fixtures/README.md). A CLIP ViT-L/14-336 tower (candle-transformers'
//! CLIP), the HD transform of [`super::phi3_v_image`], a 2x2 token merge with learned row and
//! image separators, a two-layer projector, and the Phi-3 decoder of [`super::phi3`].
//!
//! Quirks of the reference reproduced here, and why (each changes the tokens the model sees):
//! - **Image features**: CLIP's hidden state `img_processor.layer_idx` (default -2: the output of
//!   the second-to-last layer; the embeddings count as state 0), without the CLS token. Each
//!   crop's 24 x 24 patches are merged 2 x 2 into 12 x 12 tokens of 4 x C channels (channel order
//!   `[(0,0), (0,1), (1,0), (1,1)]` of each 2 x 2 block), the crops laid out as the HD image's
//!   grid; every row of tokens ends with `sub_GN`; then comes `glb_GN`, then the global view laid
//!   out the same way (12 rows of 12 + `sub_GN`). `hd_transform_order` "sub_glb" (crops first)
//!   is the only order the reference implements, and so the only one accepted.
//! - **Projector**: `Linear(4C, H)`, exact (erf) GELU, `Linear(H, H)` (`img_projection.0/.2`).
//! - **Prompt** (`Phi3VProcessor`): the chat template (the repo's own) renders each image as
//!   `<|image_N|>\n` before the message text, N counting through the conversation (the model
//!   card's format). The prompt is split at every `<|image_N|>` and **each piece is tokenized
//!   on its own with `<s>` added**, so a `<s>` follows every image; between the pieces go
//!   `num_img_tokens[N - 1]` placeholder ids `-N`. A prompt without images is tokenized whole.
//!   Image tags must be numbered 1..n for n images, as the reference asserts.
//! - **Splice**: the image features fill the placeholder positions in order (all of image 1's
//!   tokens, then image 2's, ...), whatever the tags' order in the text — as `index_put` does.
//!   The placeholders' own embedding is that of token 0 (the reference clamps the ids).
//! - **End of answer**: the ids transformers' `generate()` stops on: `generation_config.json`'s
//!   `eos_token_id`s (see [`super::eos`]; the real repo lists `<|end|>`, `<|assistant|>` and
//!   `<|endoftext|>` there, as the fixture does).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_transformers::models::clip::text_model::Activation as ClipActivation;
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use image::RgbImage;
use serde::Deserialize;
use serde_json::{Value, json};

use super::phi3::{Phi3, Phi3Config};
use super::phi3_v_image::{CROP, Phi3vImage, PreprocessSummary, process};
use super::quant::{Precision, QLinear, QuantSummary, Quantizer};
use super::template::ChatTemplate;
use super::{Checkpoint, Error, Prefill, Result, Vlm, read_json, request_images};
use crate::backend::{Request, Role};

/// `img_processor.clip_vision_config`: the tower's dimensions (the project's convention for tiny
/// checkpoints; the real repo has none and means CLIP ViT-L/14-336).
#[derive(Debug, Clone, Deserialize)]
struct ClipDims {
    #[serde(default = "d_clip_hidden")]
    hidden_size: usize,
    #[serde(default = "d_clip_inter")]
    intermediate_size: usize,
    #[serde(default = "d_clip_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_clip_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_clip_image")]
    image_size: usize,
    #[serde(default = "d_clip_patch")]
    patch_size: usize,
    #[serde(default = "d_quick")]
    hidden_act: String,
    #[serde(default = "d_ln_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_clip_proj")]
    projection_dim: usize,
}

impl Default for ClipDims {
    fn default() -> Self {
        Self {
            hidden_size: d_clip_hidden(),
            intermediate_size: d_clip_inter(),
            num_hidden_layers: d_clip_layers(),
            num_attention_heads: d_clip_heads(),
            image_size: d_clip_image(),
            patch_size: d_clip_patch(),
            hidden_act: d_quick(),
            layer_norm_eps: d_ln_eps(),
            projection_dim: d_clip_proj(),
        }
    }
}

fn d_clip_hidden() -> usize {
    1024
}
fn d_clip_inter() -> usize {
    4096
}
fn d_clip_layers() -> usize {
    24
}
fn d_clip_heads() -> usize {
    16
}
fn d_clip_image() -> usize {
    336
}
fn d_clip_patch() -> usize {
    14
}
fn d_quick() -> String {
    "quick_gelu".into()
}
fn d_ln_eps() -> f64 {
    1e-5
}
fn d_clip_proj() -> usize {
    768
}
fn d_layer_idx() -> i64 {
    -2
}
fn d_patch() -> String {
    "patch".into()
}

#[derive(Debug, Clone, Deserialize)]
struct ImgProcessor {
    image_dim_out: usize,
    #[serde(default)]
    name: Option<String>,
    #[serde(default = "d_layer_idx")]
    layer_idx: i64,
    #[serde(default = "d_patch")]
    type_feature: String,
    clip_vision_config: Option<ClipDims>,
}

#[derive(Debug, Clone, Deserialize)]
struct EmbdLayer {
    #[serde(default)]
    hd_transform_order: Option<String>,
    #[serde(default)]
    projection_cls: Option<String>,
    #[serde(default)]
    use_hd_transform: bool,
    #[serde(default)]
    with_learnable_separator: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    #[serde(flatten)]
    text: Phi3Config,
    img_processor: ImgProcessor,
    embd_layer: EmbdLayer,
}

#[derive(Debug, Clone, Deserialize)]
struct PreprocessorConfig {
    #[serde(default = "d_crops")]
    num_crops: usize,
    #[serde(default = "d_mean")]
    image_mean: Vec<f32>,
    #[serde(default = "d_std")]
    image_std: Vec<f32>,
}

fn d_crops() -> usize {
    1
}
// OpenAI CLIP's mean and std as the reference writes them (rounded to f32 as torch does).
#[allow(clippy::excessive_precision)]
fn d_mean() -> Vec<f32> {
    vec![0.481_454_66, 0.457_827_5, 0.408_210_73]
}
#[allow(clippy::excessive_precision)]
fn d_std() -> Vec<f32> {
    vec![0.268_629_54, 0.261_302_58, 0.275_777_11]
}

/// A prompt ready for the model.
pub struct Encoded {
    pub text: String,
    /// Token ids as the reference's processor writes them: image placeholders are `-N`.
    pub ids: Vec<i64>,
    pub images: Vec<Phi3vImage>,
}

pub struct Phi3V {
    num_crops: usize,
    mean: [f32; 3],
    std: [f32; 3],
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    vision: ClipVisionTransformer,
    /// Index into candle's list of layer outputs.
    feature_state: usize,
    channels: usize,
    glb_gn: Tensor,
    sub_gn: Tensor,
    proj1: QLinear,
    proj2: QLinear,
    text: Phi3,
    eos: Vec<u32>,
    last: Option<PreprocessSummary>,
    device: Device,
    dtype: DType,
    quantization: Option<QuantSummary>,
}

impl Phi3V {
    /// Loads the model at `precision`: a dtype, or quantized linear layers in the decoder and
    /// the projector (the CLIP tower, candle-transformers', stays f32; see [`super::quant`]).
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: &Device) -> Result<Self> {
        let precision = precision.into();
        let dtype = precision.dtype;
        let q = Quantizer::new(precision.quant);
        let cfg: Config = read_json(dir, "config.json")?;
        let config_file = dir.join("config.json");
        let bad = |what: String| Error::invalid(&config_file, what);
        cfg.text.check()?;
        let e = &cfg.embd_layer;
        if !e.use_hd_transform || !e.with_learnable_separator {
            return Err(bad(
                "embd_layer must have use_hd_transform and with_learnable_separator true (the only Phi-3.5-V layout)".into(),
            ));
        }
        if e.hd_transform_order.as_deref() != Some("sub_glb") {
            return Err(bad(format!(
                "embd_layer.hd_transform_order {:?} is not supported (expected \"sub_glb\", the only order the reference implements)",
                e.hd_transform_order
            )));
        }
        if e.projection_cls.as_deref() != Some("mlp") {
            return Err(bad(format!(
                "embd_layer.projection_cls {:?} is not supported (expected \"mlp\")",
                e.projection_cls
            )));
        }
        let ip = &cfg.img_processor;
        if ip.name.as_deref().is_some_and(|n| n != "clip_vision_model") {
            return Err(bad(format!(
                "img_processor.name {:?} is not supported (expected \"clip_vision_model\")",
                ip.name
            )));
        }
        if ip.type_feature != "patch" {
            return Err(bad(format!(
                "img_processor.type_feature `{}` is not supported (expected patch)",
                ip.type_feature
            )));
        }
        let v = ip.clip_vision_config.clone().unwrap_or_default();
        if v.image_size != CROP || v.patch_size != 14 {
            return Err(bad(format!(
                "img_processor.clip_vision_config: image_size {} / patch_size {} (the reference hard-codes 336-px crops of 24 x 24 patches)",
                v.image_size, v.patch_size
            )));
        }
        if v.hidden_size != ip.image_dim_out {
            return Err(bad(format!(
                "img_processor.image_dim_out {} differs from the CLIP tower's hidden_size {}",
                ip.image_dim_out, v.hidden_size
            )));
        }
        if v.hidden_act != "quick_gelu" || (v.layer_norm_eps - 1e-5).abs() > 1e-12 {
            return Err(bad(format!(
                "img_processor.clip_vision_config: hidden_act quick_gelu and layer_norm_eps 1e-5 are supported, got {} and {}",
                v.hidden_act, v.layer_norm_eps
            )));
        }
        let layers = v.num_hidden_layers as i64;
        let state = if ip.layer_idx < 0 {
            layers + 1 + ip.layer_idx
        } else {
            ip.layer_idx
        };
        if state < 1 || state > layers {
            return Err(bad(format!(
                "img_processor.layer_idx {} is not supported (expected the output of one of the {layers} layers)",
                ip.layer_idx
            )));
        }
        let pre: PreprocessorConfig = read_json(dir, "preprocessor_config.json")?;
        let pre_file = dir.join("preprocessor_config.json");
        let three = |v: &[f32], name: &str| -> Result<[f32; 3]> {
            <[f32; 3]>::try_from(v).map_err(|_| {
                Error::invalid(
                    &pre_file,
                    format!("{name} must have 3 values, got {}", v.len()),
                )
            })
        };
        let mean = three(&pre.image_mean, "image_mean")?;
        let std = three(&pre.image_std, "image_std")?;
        if pre.num_crops == 0 {
            return Err(Error::invalid(&pre_file, "num_crops must be at least 1"));
        }
        let ckpt = Checkpoint::open(dir, dtype, device)?;
        let template = ChatTemplate::load(dir)?;
        let eos = ckpt.stop_tokens()?;
        let vb = &ckpt.vb;
        let weights = ckpt.weights_error();
        let clip = ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: ClipActivation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: v.projection_dim,
            num_channels: 3,
            image_size: v.image_size,
            patch_size: v.patch_size,
        };
        let emb = vb.pp("model.vision_embed_tokens");
        let vision = ClipVisionTransformer::new(emb.pp("img_processor.vision_model"), &clip)
            .map_err(&weights)?;
        let c = ip.image_dim_out;
        let h = cfg.text.hidden_size;
        let glb_gn = emb
            .get((1, 1, 4 * c), "glb_GN")
            .and_then(|t| t.reshape((1, 4 * c)))
            .map_err(&weights)?;
        let sub_gn = emb
            .get((1, 1, 1, 4 * c), "sub_GN")
            .and_then(|t| t.reshape((1, 1, 4 * c)))
            .map_err(&weights)?;
        let proj1 = q
            .linear(4 * c, h, true, emb.pp("img_projection.0"))
            .map_err(&weights)?;
        let proj2 = q
            .linear(h, h, true, emb.pp("img_projection.2"))
            .map_err(&weights)?;
        let text_vb = vb.pp("model");
        let embed_vb = if text_vb.contains_tensor("embed_tokens.weight") {
            text_vb.pp("embed_tokens")
        } else {
            emb.pp("wte")
        };
        let embed = q
            .embedding(cfg.text.vocab_size, h, embed_vb)
            .map_err(&weights)?;
        let text = Phi3::load(&cfg.text, text_vb, vb.pp("lm_head"), embed, &q).map_err(&weights)?;
        Ok(Self {
            num_crops: pre.num_crops,
            mean,
            std,
            tokenizer: ckpt.tokenizer,
            template,
            vision,
            feature_state: state as usize - 1,
            channels: c,
            glb_gn,
            sub_gn,
            proj1,
            proj2,
            text,
            eos,
            last: None,
            device: device.clone(),
            dtype,
            quantization: q.finish(&format!("phi3-v {}", dir.display())),
        })
    }

    /// Overrides preprocessor_config.json's `num_crops` (the model card suggests 4 for several
    /// images, 16 for one).
    pub fn set_num_crops(&mut self, num_crops: usize) {
        self.num_crops = num_crops.max(1);
    }

    pub fn num_crops(&self) -> usize {
        self.num_crops
    }

    /// The conversation as the repo's chat template expects it: string contents, each image as
    /// `<|image_N|>\n` before the text.
    pub fn messages(request: &Request) -> Value {
        let mut out = Vec::new();
        if let Some(sys) = &request.params.system_prompt {
            out.push(json!({"role": "system", "content": sys}));
        }
        let mut n = 0;
        for m in &request.messages {
            let mut content = String::new();
            for _ in &m.images {
                n += 1;
                content.push_str(&format!("<|image_{n}|>\n"));
            }
            content.push_str(&m.text);
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            out.push(json!({"role": role, "content": content}));
        }
        Value::Array(out)
    }

    /// The prompt of a conversation, with the generation prompt.
    pub fn render(&self, request: &Request) -> Result<String> {
        self.template.render(&Self::messages(request), true)
    }

    /// Processes the images and tokenizes a rendered prompt as `Phi3VProcessor` does.
    pub fn encode(&self, prompt: &str, images: &[RgbImage]) -> Result<Encoded> {
        let tok = |s: &str| -> Result<Vec<i64>> {
            self.tokenizer
                .encode(s, true)
                .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
                .map_err(|source| Error::Tokenize {
                    what: "the prompt",
                    source,
                })
        };
        if images.is_empty() {
            return Ok(Encoded {
                text: prompt.to_string(),
                ids: tok(prompt)?,
                images: Vec::new(),
            });
        }
        let processed = images
            .iter()
            .map(|i| process(i, self.num_crops, &self.mean, &self.std))
            .collect::<Result<Vec<_>, _>>()?;
        // Split at `<|image_N|>` (the reference's `<\|image_\d+\|>`); anything else stays text.
        let mut chunks = Vec::new();
        let mut tags = Vec::new();
        let (mut chunk_start, mut search) = (0, 0);
        while let Some(found) = prompt[search..].find("<|image_") {
            let start = search + found;
            let after = &prompt[start + "<|image_".len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && after[digits..].starts_with("|>") {
                let n: usize = after[..digits].parse().map_err(|_| {
                    Error::request(format!(
                        "image tag <|image_{}|> is out of range",
                        &after[..digits]
                    ))
                })?;
                chunks.push(&prompt[chunk_start..start]);
                tags.push(n);
                chunk_start = start + "<|image_".len() + digits + 2;
                search = chunk_start;
            } else {
                search = start + "<|image_".len();
            }
        }
        chunks.push(&prompt[chunk_start..]);
        let mut unique = tags.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique != (1..=unique.len()).collect::<Vec<_>>() || unique.len() != images.len() {
            return Err(Error::request(format!(
                "the prompt's image tags {tags:?} must number the {} images 1..{} (as the reference requires)",
                images.len(),
                images.len()
            )));
        }
        let mut ids = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            ids.extend(tok(chunk)?);
            if let Some(&n) = tags.get(i) {
                ids.extend(std::iter::repeat_n(-(n as i64), processed[n - 1].tokens));
            }
        }
        Ok(Encoded {
            text: prompt.to_string(),
            ids,
            images: processed,
        })
    }

    /// Merges 2 x 2 patches of `[n, 576, C]` features laid out as a `rows` x `cols` grid of
    /// crops, ends each row with `sub_GN`: `[rows * 12 * (cols * 12 + 1), 4C]`.
    fn merge(&self, f: &Tensor, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
        let c = self.channels;
        let side = 24;
        let half = side / 2;
        let n = f.dim(0)?;
        let merged = f
            .reshape((n, half, 2, half, 2, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((rows, cols, half, half, 4 * c))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((rows * half, cols * half, 4 * c))?;
        let newline =
            self.sub_gn
                .to_dtype(merged.dtype())?
                .broadcast_as((rows * half, 1, 4 * c))?;
        Tensor::cat(&[merged, newline], 1)?.reshape((rows * half * (cols * half + 1), 4 * c))
    }

    /// The projected features of one image, in prompt order: `[tokens, hidden]`.
    fn image_features(&self, p: &Phi3vImage) -> candle_core::Result<Tensor> {
        let n = CROP * CROP * 3;
        let mut crops = Vec::with_capacity(p.count());
        // One crop at a time: the tower's per-layer states of a single crop stay small.
        for k in 0..p.count() {
            let px = Tensor::from_slice(
                &p.pixels[k * n..(k + 1) * n],
                (1, 3, CROP, CROP),
                &self.device,
            )?
            .to_dtype(self.dtype)?;
            let states = self.vision.output_hidden_states(&px)?;
            crops.push(states[self.feature_state].i((.., 1..))?);
        }
        let feats = Tensor::cat(&crops, 0)?; // [count, 576, C]
        let (rows, cols) = p.grid;
        let sub = self.merge(&feats.narrow(0, 1, rows * cols)?, rows, cols)?;
        let glb = self.merge(&feats.narrow(0, 0, 1)?, 1, 1)?;
        let all = Tensor::cat(&[sub, self.glb_gn.to_dtype(glb.dtype())?, glb], 0)?;
        let x = self.proj1.forward(&all)?.gelu_erf()?;
        self.proj2.forward(&x)
    }

    /// Runs an encoded prompt from an empty cache; returns the logits after it.
    pub fn prefill_encoded(&mut self, enc: &Encoded) -> Result<Tensor> {
        self.text.reset();
        const SLOT: u32 = u32::MAX;
        let ids: Vec<u32> = enc
            .ids
            .iter()
            .map(|&i| if i < 0 { SLOT } else { i as u32 })
            .collect();
        let clamped: Vec<u32> = ids.iter().map(|&i| if i == SLOT { 0 } else { i }).collect();
        let t = Tensor::new(clamped.as_slice(), &self.device)?;
        let embeds = self.text.embed(&t)?;
        let feats = if enc.images.is_empty() {
            None
        } else {
            let f = enc
                .images
                .iter()
                .map(|p| self.image_features(p))
                .collect::<candle_core::Result<Vec<_>>>()
                .and_then(|f| Tensor::cat(&f, 0))?;
            Some(f)
        };
        let embeds = super::splice_images(&embeds, &ids, SLOT, feats)?;
        Ok(self.text.forward_embeds(&embeds.unsqueeze(0)?)?)
    }

    /// Image tokens, crop grid and pixel hash of the last request's images.
    pub fn preprocess_summary(&self) -> Option<&PreprocessSummary> {
        self.last.as_ref()
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
}

impl Vlm for Phi3V {
    fn prefill(&mut self, request: &Request) -> Result<Prefill> {
        let prompt = self.render(request)?;
        let images = request_images(request)?;
        let enc = self.encode(&prompt, &images)?;
        let summary = PreprocessSummary::of(&enc.images);
        for (i, img) in summary.images.iter().enumerate() {
            tracing::debug!(
                image = i + 1,
                tokens = img.tokens,
                rows = img.grid.0,
                cols = img.grid.1,
                pixels = %img.pixel_hash,
                "phi3-v preprocessing"
            );
        }
        self.last = Some(summary);
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

    fn preprocessing(&self) -> Option<Value> {
        self.last
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
    }

    fn quantization(&self) -> Option<&QuantSummary> {
        self.quantization.as_ref()
    }
}

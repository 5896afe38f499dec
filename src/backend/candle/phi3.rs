//! The Phi-3 decoder of Phi-3(.5)-Vision, ported from Microsoft's remote code
//! (`modeling_phi3_v.py` of microsoft/Phi-3.5-vision-instruct; see tests/fixtures/README.md for
//! the copy read): fused `qkv_proj` and `gate_up_proj`, RMSNorm, rotary embeddings with
//! `rotate_half`, eager attention with the softmax in f32, and the "su" (LongRoPE) scaling.
//!
//! Quirks of the reference reproduced here, and why:
//! - **The short/long RoPE factors are chosen per forward call**, from the largest position in
//!   that call (`seq_len = max(position_ids) + 1 > original_max_position_embeddings`): a prompt
//!   that fits uses the short factors, and once generation passes the limit the new tokens are
//!   rotated with the long factors while the cached keys keep the short ones. That is what the
//!   reference computes, so that is what the port computes.
//! - **`inv_freq` is computed in f32** as `1 / (factor * base ** (arange(0, d, 2) / d))`, and
//!   cos/sin are multiplied by `sqrt(1 + ln(max/original) / ln(original))` (1 when
//!   `max_position_embeddings <= original_max_position_embeddings`).
//! - **`gate_up_proj` is split gate first, up second**; the MLP is `down(up * silu(gate))`.
//! - Scores are divided by `sqrt(head_dim)` (not multiplied by its inverse), as the reference does.
//!
//! Only `rope_scaling` of type "su" (its later name "longrope" is accepted too) or none is
//! supported; "yarn" is refused at load with a clear error rather than computed wrongly.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{RmsNorm, VarBuilder};
use serde::Deserialize;

use super::quant::{QEmbedding, QLinear, Quantizer};

/// The text keys of Phi-3-V's config.json (defaults are `Phi3VConfig`'s).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Phi3Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_max_pos")]
    pub original_max_position_embeddings: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RopeScaling {
    #[serde(rename = "type", alias = "rope_type")]
    pub kind: String,
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
}

fn d_vocab() -> usize {
    32064
}
fn d_hidden() -> usize {
    3072
}
fn d_intermediate() -> usize {
    8192
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f64 {
    10000.0
}
fn d_max_pos() -> usize {
    4096
}
fn d_act() -> String {
    "silu".into()
}

impl Phi3Config {
    pub(crate) fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub(crate) fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// What this implementation does not do, said before loading rather than computed wrongly.
    pub(crate) fn check(&self) -> super::Result<()> {
        use super::Error;
        if self.hidden_act != "silu" {
            return Err(Error::invalid(
                "config.json",
                format!(
                    "hidden_act `{}` is not supported (expected silu)",
                    self.hidden_act
                ),
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.kv_heads().max(1))
        {
            return Err(Error::invalid(
                "config.json",
                format!(
                    "hidden_size {} / num_attention_heads {} / num_key_value_heads {} do not divide evenly",
                    self.hidden_size,
                    self.num_attention_heads,
                    self.kv_heads()
                ),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if s.kind != "su" && s.kind != "longrope" {
                return Err(Error::invalid(
                    "config.json",
                    format!(
                        "rope_scaling type `{}` is not supported (expected su or longrope)",
                        s.kind
                    ),
                ));
            }
            let half = self.head_dim() / 2;
            if s.short_factor.len() != half || s.long_factor.len() != half {
                return Err(Error::invalid(
                    "config.json",
                    format!(
                        "rope_scaling short_factor and long_factor must have {half} values (head_dim / 2), got {} and {}",
                        s.short_factor.len(),
                        s.long_factor.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

struct Attention {
    qkv: QLinear,
    o: QLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cache: Option<(Tensor, Tensor)>,
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    gate_up: QLinear,
    down: QLinear,
    intermediate: usize,
}

/// The rotary tables' recipe: base inverse frequencies and the LongRoPE factors.
struct Rope {
    /// `base ** (2i / d)` in f32, one per frequency.
    base_pow: Vec<f32>,
    short: Vec<f32>,
    long: Vec<f32>,
    original_max: usize,
    scaling: f32,
}

pub(crate) struct Phi3 {
    embed: QEmbedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: QLinear,
    rope: Rope,
    /// Tokens already in the KV cache.
    pos: usize,
    device: Device,
    dtype: DType,
}

impl Attention {
    fn forward(
        &mut self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let qkv = self.qkv.forward(x)?;
        let (hq, hk) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let split = |start: usize, len: usize, heads: usize| -> Result<Tensor> {
            qkv.narrow(2, start, len)?
                .reshape((b, s, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(0, hq, self.heads)?;
        let k = split(hq, hk, self.kv_heads)?;
        let v = split(hq + hk, hk, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match &self.cache {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        self.cache = Some((k.clone(), v.clone()));
        let rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?;
        let in_dtype = q.dtype();
        let q = q.to_dtype(DType::F32)?;
        let k = k.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F32)?;
        let mut att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        if let Some(m) = mask {
            att = att.broadcast_add(m)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?.to_dtype(in_dtype)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, s, self.heads * self.head_dim))?;
        self.o.forward(&y)
    }
}

impl Phi3 {
    /// Loads the decoder from `vb` (the prefix holding `embed_tokens`, `layers`, `norm`) and the
    /// LM head from `lm_head`. `embed` is the token embedding when it lives elsewhere (Phi-3-V
    /// checkpoints may store it as `vision_embed_tokens.wte` only). The linear layers are made
    /// by `q` ([`super::quant`]).
    pub(crate) fn load(
        cfg: &Phi3Config,
        vb: VarBuilder,
        lm_head: VarBuilder,
        embed: QEmbedding,
        q: &Quantizer,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let m = l.pp("mlp");
            let qkv_out = (cfg.num_attention_heads + 2 * cfg.kv_heads()) * hd;
            layers.push(Layer {
                input_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?,
                attn: Attention {
                    qkv: q.linear(h, qkv_out, false, a.pp("qkv_proj"))?,
                    o: q.linear(cfg.num_attention_heads * hd, h, false, a.pp("o_proj"))?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.kv_heads(),
                    head_dim: hd,
                    cache: None,
                },
                post_norm: candle_nn::rms_norm(
                    h,
                    cfg.rms_norm_eps,
                    l.pp("post_attention_layernorm"),
                )?,
                gate_up: q.linear(h, 2 * cfg.intermediate_size, false, m.pp("gate_up_proj"))?,
                down: q.linear(cfg.intermediate_size, h, false, m.pp("down_proj"))?,
                intermediate: cfg.intermediate_size,
            });
        }
        let norm = candle_nn::rms_norm(h, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if !cfg.tie_word_embeddings && lm_head.contains_tensor("weight") {
            q.linear(h, cfg.vocab_size, false, lm_head)?
        } else {
            q.tied_head(&embed)?
        };
        // `torch.arange(0, d, 2).float() / d` and `base ** that`, both in f32.
        let base = cfg.rope_theta as f32;
        let base_pow = (0..hd)
            .step_by(2)
            .map(|i| base.powf(i as f32 / hd as f32))
            .collect();
        let (short, long) = match &cfg.rope_scaling {
            Some(s) => (
                s.short_factor.iter().map(|f| *f as f32).collect(),
                s.long_factor.iter().map(|f| *f as f32).collect(),
            ),
            None => (vec![1.0; hd / 2], vec![1.0; hd / 2]),
        };
        let scale =
            cfg.max_position_embeddings as f64 / cfg.original_max_position_embeddings as f64;
        let scaling = if cfg.rope_scaling.is_none() || scale <= 1.0 {
            1.0
        } else {
            (1.0 + scale.ln() / (cfg.original_max_position_embeddings as f64).ln()).sqrt()
        };
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            rope: Rope {
                base_pow,
                short,
                long,
                original_max: if cfg.rope_scaling.is_some() {
                    cfg.original_max_position_embeddings
                } else {
                    usize::MAX
                },
                scaling: scaling as f32,
            },
            pos: 0,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// Token embeddings, `[b, s, hidden]`.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    /// Empties the KV cache: the next call starts a new sequence.
    pub(crate) fn reset(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            l.attn.cache = None;
        }
    }

    /// cos and sin for positions `pos..pos + s`, the factors chosen from `pos + s` (see the
    /// module documentation).
    fn rope_tables(&self, s: usize) -> Result<(Tensor, Tensor)> {
        let r = &self.rope;
        let factors = if self.pos + s > r.original_max {
            &r.long
        } else {
            &r.short
        };
        let inv_freq: Vec<f32> = factors
            .iter()
            .zip(&r.base_pow)
            .map(|(f, b)| 1.0 / (f * b))
            .collect();
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for p in self.pos..self.pos + s {
            for f in &inv_freq {
                let a = f * p as f32;
                cos.push(a.cos() * r.scaling);
                sin.push(a.sin() * r.scaling);
            }
        }
        let cos = Tensor::from_vec(cos, (s, half), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (s, half), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Runs `x` (`[1, s, hidden]`) after what the cache holds; returns the logits at the last
    /// position, `[vocab]`, f32.
    pub(crate) fn forward_embeds(&mut self, x: &Tensor) -> Result<Tensor> {
        let (_, s, _) = x.dims3()?;
        let (cos, sin) = self.rope_tables(s)?;
        let mask = if s > 1 {
            let total = self.pos + s;
            let pos = self.pos;
            let m: Vec<f32> = (0..s)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (1, 1, s, total), &self.device)?)
        } else {
            None
        };
        let mut x = x.clone();
        for l in &mut self.layers {
            let r = x.clone();
            let h = l.input_norm.forward(&x)?;
            let h = l.attn.forward(&h, &cos, &sin, mask.as_ref())?;
            x = (r + h)?;
            let r = x.clone();
            let h = l.post_norm.forward(&x)?;
            let gu = l.gate_up.forward(&h)?;
            let gate = gu.narrow(2, 0, l.intermediate)?;
            let up = gu.narrow(2, l.intermediate, l.intermediate)?;
            let h = l.down.forward(&(up * candle_nn::ops::silu(&gate)?)?)?;
            x = (r + h)?;
        }
        self.pos += s;
        let last = x.narrow(1, s - 1, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        logits.flatten_all()?.to_dtype(DType::F32)
    }

    /// One token after what the cache holds.
    pub(crate) fn forward_token(&mut self, token: u32) -> Result<Tensor> {
        let ids = Tensor::new(&[[token]], &self.device)?;
        let x = self.embed(&ids)?;
        self.forward_embeds(&x)
    }
}

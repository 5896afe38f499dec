//! A Llama decoder that takes input embeddings (so image features can be spliced in), with a KV
//! cache that [`Llama::reset`] empties between requests. Numerically it follows transformers'
//! `LlamaModel`: RMSNorm, rotary embeddings with `rotate_half`, grouped-query attention with the
//! softmax in f32, SiLU-gated MLP. Its linear layers, embeddings and LM head come from a
//! [`Quantizer`], so the decoder runs dense or with 8/4-bit weights ([`super::quant`]).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{RmsNorm, VarBuilder};
use serde::Deserialize;

use super::quant::{QEmbedding, QLinear, Quantizer};

/// `text_config` of a Llama-based model (the keys transformers writes; defaults are
/// `LlamaConfig`'s).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
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
    pub head_dim: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    /// transformers 5 writes `rope_parameters: {rope_theta, rope_type}`.
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub(crate) fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub(crate) fn theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|t| t.as_f64())
            })
            .unwrap_or(10000.0)
    }

    /// What this implementation does not do, said before loading rather than computed wrongly.
    pub fn check(&self) -> super::Result<()> {
        use super::Error;
        super::check_sizes(
            "config.json",
            &[
                ("text_config.vocab_size", self.vocab_size),
                ("text_config.hidden_size", self.hidden_size),
                ("text_config.intermediate_size", self.intermediate_size),
                ("text_config.num_hidden_layers", self.num_hidden_layers),
                ("text_config.num_attention_heads", self.num_attention_heads),
                ("text_config.num_key_value_heads", self.kv_heads()),
                ("text_config.head_dim", self.head_dim.unwrap_or(1)),
            ],
        )?;
        if self.hidden_act != "silu" {
            return Err(Error::unsupported(format!(
                "text_config.hidden_act `{}` is not supported (expected silu)",
                self.hidden_act
            )));
        }
        let scaled = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "default")
        };
        if scaled(&self.rope_scaling) || scaled(&self.rope_parameters) {
            return Err(Error::unsupported(
                "text_config: rope scaling is not supported (only rope_type \"default\")",
            ));
        }
        if self.num_attention_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.kv_heads().max(1))
        {
            return Err(Error::unsupported(format!(
                "text_config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        Ok(())
    }
}

struct Attention {
    q: QLinear,
    k: QLinear,
    v: QLinear,
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
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

pub(crate) struct Llama {
    embed: QEmbedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: QLinear,
    inv_freq: Vec<f32>,
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
        let q = self
            .q
            .forward(x)?
            .reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k
            .forward(x)?
            .reshape((b, s, self.kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .v
            .forward(x)?
            .reshape((b, s, self.kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match &self.cache {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v.contiguous()?),
        };
        self.cache = Some((k.clone(), v.clone()));
        let rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?;
        let in_dtype = q.dtype();
        let q = q.to_dtype(DType::F32)?;
        let k = k.to_dtype(DType::F32)?;
        let v = v.to_dtype(DType::F32)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?;
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

impl Llama {
    /// Loads the decoder from `vb` (the prefix that holds `embed_tokens`, `layers`, `norm`) and the
    /// LM head from `lm_head` (tied to the embeddings when the config says so or the checkpoint
    /// has no head), the linear layers and embeddings as `q` makes them.
    pub(crate) fn load(
        cfg: &LlamaConfig,
        vb: VarBuilder,
        lm_head: VarBuilder,
        q: &Quantizer,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let embed = q.embedding(cfg.vocab_size, h, vb.pp("embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let m = l.pp("mlp");
            layers.push(Layer {
                input_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?,
                attn: Attention {
                    q: q.linear(
                        h,
                        cfg.num_attention_heads * hd,
                        cfg.attention_bias,
                        a.pp("q_proj"),
                    )?,
                    k: q.linear(h, cfg.kv_heads() * hd, cfg.attention_bias, a.pp("k_proj"))?,
                    v: q.linear(h, cfg.kv_heads() * hd, cfg.attention_bias, a.pp("v_proj"))?,
                    o: q.linear(
                        cfg.num_attention_heads * hd,
                        h,
                        cfg.attention_bias,
                        a.pp("o_proj"),
                    )?,
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
                gate: q.linear(h, cfg.intermediate_size, cfg.mlp_bias, m.pp("gate_proj"))?,
                up: q.linear(h, cfg.intermediate_size, cfg.mlp_bias, m.pp("up_proj"))?,
                down: q.linear(cfg.intermediate_size, h, cfg.mlp_bias, m.pp("down_proj"))?,
            });
        }
        let norm = candle_nn::rms_norm(h, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if !cfg.tie_word_embeddings && lm_head.contains_tensor("weight") {
            q.linear(h, cfg.vocab_size, false, lm_head)?
        } else {
            q.tied_head(&embed)?
        };
        // inv_freq as transformers computes it: in f32, base ** (2i / dim).
        let theta = cfg.theta() as f32;
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / hd as f32))
            .collect();
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
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

    fn rope_tables(&self, s: usize) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for p in self.pos..self.pos + s {
            for f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
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
            let g = candle_nn::ops::silu(&l.gate.forward(&h)?)?;
            let h = l.down.forward(&(g * l.up.forward(&h)?)?)?;
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

//! The 2025 Moondream2's text decoder: Phi-shaped parallel blocks with partial rotary
//! embeddings, a KV cache, and the mask that lets BOS + the image attend both ways.
//!
//! Reference: vikhyat/moondream `moondream/torch/text.py` (`text_decoder`, `attn`, `lm_head`,
//! `build_text_model`), `rope.py` and `moondream.py` (the attention mask, `encode_image`,
//! `_prefill_prompt`, `_generate_answer`) at commit 44146f1. Weight names are the Hub files'
//! `model.text.*`.
//!
//! What the reference does, as ported here:
//! - Blocks are parallel, one LayerNorm for both branches: `h = ln(x); x = x + attn(h) + mlp(h)`.
//! - Attention: a fused `qkv` projection (q | k | v of `n_heads`, `n_kv_heads`, `n_kv_heads`
//!   heads of 64), rotary embeddings on the first 32 dims of each q and k head (θ = 10000,
//!   frequencies `θ^(−2i/32)` computed in f32, the first 16 dims rotated against the next 16,
//!   i.e. rotate-half), the other 32 dims untouched; absolute positions; softmax scale 1/8.
//!   The reference writes each rotated (real, imaginary) pair back interleaved; that permutes
//!   the dims of q and k alike, so q·k and the output are the same as without it.
//! - `wte` is a bare tensor (no `.weight`); `lm_head` is its own Linear with a bias, applied
//!   after `post_ln` to the last position only.
//! - The mask: positions 0..730 (BOS + 729 image embeddings) attend to each other both ways;
//!   everything after is causal. The reference prefills the image prefix as one block, then the
//!   prompt as one block, then one token per step; so does [`Text`] (its KV cache starts empty
//!   at every request). Its size comes from 1 + (378 / 14)², not from `text.prefix_attn`.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::config::{HEAD_DIM, ROT_DIM, TextConfig};
use super::vision::EPS;
use crate::backend::candle::quant::{QEmbedding, QLinear, Quantizer};
use crate::backend::candle::siglip::{Act, activate};

struct Block {
    ln: LayerNorm,
    qkv: QLinear,
    proj: QLinear,
    fc1: QLinear,
    fc2: QLinear,
    /// `[1, kv_heads, positions, 64]` each.
    cache: Option<(Tensor, Tensor)>,
}

/// How a block of new positions attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attend {
    /// To every position, earlier and later in the block (the image prefix; a single token).
    All,
    /// To every earlier position, and causally within the block.
    Causal,
}

pub struct Text {
    wte: QEmbedding,
    blocks: Vec<Block>,
    post_ln: LayerNorm,
    lm_head: QLinear,
    /// `[max_context, 16]`, f32.
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    max_context: usize,
    /// Positions in the cache.
    pos: usize,
    device: Device,
}

/// `precompute_freqs_cis(32, n)` of `rope.py`, in f32 as the reference computes it: the cosines
/// and sines `[n, 16]` of `t · θ^(−2i/32)`.
pub(crate) fn rotary_tables(n: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = ROT_DIM / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / ROT_DIM as f32))
        .collect();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for t in 0..n {
        for f in &freqs {
            let a = t as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

impl Text {
    /// Loads `model.text.*` (the `vb` given is at `model.text`), the linear layers and the token
    /// embeddings as `q` makes them.
    pub fn load(c: &TextConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let d = c.dim;
        let qkv_dim = (c.n_heads + 2 * c.n_kv_heads) * HEAD_DIM;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(Block {
                ln: candle_nn::layer_norm(d, EPS, b.pp("ln"))?,
                qkv: q.linear(d, qkv_dim, true, b.pp("attn.qkv"))?,
                proj: q.linear(d, d, true, b.pp("attn.proj"))?,
                fc1: q.linear(d, c.ff_dim, true, b.pp("mlp.fc1"))?,
                fc2: q.linear(c.ff_dim, d, true, b.pp("mlp.fc2"))?,
                cache: None,
            });
        }
        let (cos, sin) = rotary_tables(c.max_context, vb.device())?;
        Ok(Self {
            wte: q.embedding_from(
                vb.get((c.vocab_size, d), "wte")?,
                &format!("{}.wte", vb.prefix()),
            )?,
            blocks,
            post_ln: candle_nn::layer_norm(d, EPS, vb.pp("post_ln"))?,
            lm_head: q.linear(d, c.vocab_size, true, vb.pp("lm_head"))?,
            cos,
            sin,
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            max_context: c.max_context,
            pos: 0,
            device: vb.device().clone(),
        })
    }

    /// Empties the KV cache.
    pub fn clear(&mut self) {
        for b in &mut self.blocks {
            b.cache = None;
        }
        self.pos = 0;
    }

    /// Positions in the cache.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Token embeddings `[n, dim]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.wte.forward(&ids)
    }

    /// Runs `x` (`[n, dim]`) at the next `n` positions, filling the cache; returns the hidden
    /// states `[1, n, dim]`.
    pub fn forward(&mut self, x: &Tensor, attend: Attend) -> Result<Tensor> {
        let n = x.dim(0)?;
        if self.pos + n > self.max_context {
            candle_core::bail!(
                "{} positions do not fit Moondream's context of {}",
                self.pos + n,
                self.max_context
            );
        }
        let cos = self.cos.narrow(0, self.pos, n)?;
        let sin = self.sin.narrow(0, self.pos, n)?;
        let mask = match attend {
            Attend::Causal if n > 1 => Some(causal_mask(n, self.pos, x.device())?),
            _ => None,
        };
        let mut x = x.unsqueeze(0)?;
        let (heads, kv_heads) = (self.heads, self.kv_heads);
        for b in &mut self.blocks {
            let h = b.ln.forward(&x)?;
            let a = attention(b, &h, heads, kv_heads, &cos, &sin, mask.as_ref())?;
            let m = b
                .fc2
                .forward(&activate(&b.fc1.forward(&h)?, Act::GeluTanh)?)?;
            x = ((x + a)? + m)?;
        }
        self.pos += n;
        Ok(x)
    }

    /// `lm_head`: the logits `[vocab]` (f32) after the last of `hidden`'s positions.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let n = hidden.dim(1)?;
        let last = hidden.narrow(1, n - 1, 1)?;
        self.lm_head
            .forward(&self.post_ln.forward(&last)?)?
            .flatten_all()?
            .to_dtype(DType::F32)
    }
}

/// `[n, past + n]`: 0 where a new position may look, −∞ after it.
fn causal_mask(n: usize, past: usize, device: &Device) -> Result<Tensor> {
    let t = past + n;
    let m: Vec<f32> = (0..n)
        .flat_map(|i| (0..t).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (n, t), device)
}

/// Rotary embedding on the first 32 dims of each head of `x` (`[1, heads, n, 64]`), in f32.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let rot = x
        .narrow(D::Minus1, 0, ROT_DIM)?
        .to_dtype(DType::F32)?
        .contiguous()?;
    let rot = candle_nn::rotary_emb::rope(&rot, cos, sin)?.to_dtype(dtype)?;
    let pass = x.narrow(D::Minus1, ROT_DIM, HEAD_DIM - ROT_DIM)?;
    Tensor::cat(&[&rot, &pass], D::Minus1)
}

fn attention(
    b: &mut Block,
    h: &Tensor,
    heads: usize,
    kv_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, n, _) = h.dims3()?;
    let qkv = b.qkv.forward(h)?;
    let split = |start: usize, count: usize| -> Result<Tensor> {
        qkv.narrow(2, start * HEAD_DIM, count * HEAD_DIM)?
            .reshape((1, n, count, HEAD_DIM))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = rotate(&split(0, heads)?, cos, sin)?;
    let k = rotate(&split(heads, kv_heads)?, cos, sin)?;
    let v = split(heads + kv_heads, kv_heads)?;
    let (k, v) = match &b.cache {
        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
        None => (k, v),
    };
    b.cache = Some((k.clone(), v.clone()));
    let rep = heads / kv_heads;
    let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mut att = (q * scale)?.matmul(&k.t()?)?;
    if let Some(m) = mask {
        att = att.broadcast_add(&m.to_dtype(att.dtype())?)?;
    }
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((1, n, heads * HEAD_DIM))?;
    b.proj.forward(&y)
}

//! Moondream2's 2024 architecture, as the Hugging Face repo `vikhyatk/moondream2` ran it at
//! revision `2024-03-06`: a SigLIP-so400m vision tower (timm's `vit_so400m_patch14_siglip_384`
//! with a linear patch embedding), a two-layer projection, and a Phi-1.5 decoder.
//!
//! Reference: the repo's remote code at that revision, which is `moondream/` of
//! github.com/vikhyat/moondream at commit 53fbcbf (2024-03-06, "batch inference support"):
//! `vision_encoder.py`, `modeling_phi.py`, `configuration_moondream.py` (and `moondream.py`, whose
//! prompt and answer handling live in [`super::moondream`]). Ported in our own words from candle
//! pieces; checked against that code's outputs by `tests/candle_moondream.rs`.
//!
//! Behaviour of the reference reproduced here, quirks included:
//! - **Vision tower** (timm 0.9.12's ViT as the reference builds it): the 378×378 image is cut
//!   into 27×27 patches of 14×14, each flattened channel-major (`c p1 p2`, einops'
//!   `b c (h p1) (w p2) -> b (h w) (c p1 p2)`) into a linear layer (the checkpoint stores the
//!   conv weights as `patch_embed.linear`); learned positions added; pre-norm blocks with
//!   LayerNorm **eps 1e-6** (timm's ViT default, not SigLIP's 1e-5 nor candle-transformers'
//!   `moondream`'s) and **exact (erf) GELU** (timm's default `nn.GELU`; the repo switched to the
//!   tanh approximation only on 2024-03-31); final LayerNorm; no pooling head (the reference
//!   replaces it by an identity). Attention scale `1/√72`.
//! - **Projection**: `fc1 → exact GELU → fc2`, 1152 → 8192 → 2048 in the real model.
//! - **Decoder** (`modeling_phi.py`, transformers' Phi of early 2024 with moondream's tensor
//!   names: `transformer.embd.wte`, `transformer.h.N.{ln, mixer.Wqkv, mixer.out_proj, mlp.fc1,
//!   mlp.fc2}`, `lm_head.{ln, linear}`): parallel blocks (`attn(ln(x)) + mlp(ln(x)) + x`, summed
//!   in that order), one fused `Wqkv` split into thirds, rotary embedding on the first
//!   `partial_rotary_factor · head_size` dimensions in the rotate-half layout, frequencies and
//!   cos/sin computed in f32; queries and keys upcast to f32 for the scores and the softmax in
//!   f32 (Phi-2's overflow guard, kept so f16/bf16 runs follow the reference); no final norm in
//!   the stack, the LM head carries its own LayerNorm and a biased linear layer.
//! - **Dimensions**: the real repo's `config.json` says only `"phi_config": {"model_type":
//!   "phi"}`; the reference then takes `PhiConfig`'s defaults (see [`TextConfig::default`]). Its
//!   vision sizes are hard-coded; vlmtest reads them off the tensors (width, depth, MLP and
//!   projection widths) with heads = width / 72, the head size of SigLIP so400m (1152 / 16):
//!   that is how the tiny test checkpoint, made by the reference code at smaller widths, says it
//!   is small ([`VisionDims::from_shapes`]).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

/// The side of the square image the vision tower takes.
pub const SIDE: usize = 378;
/// The patch side.
pub(crate) const PATCH: usize = 14;
/// Patches per image (27 × 27), i.e. image embeddings in the prompt.
pub(crate) const IMAGE_TOKENS: usize = (SIDE / PATCH) * (SIDE / PATCH);
/// The head size of the vision tower's attention (SigLIP so400m: 1152 / 16 heads).
pub(crate) const VISION_HEAD_SIZE: usize = 72;
/// timm's ViT LayerNorm epsilon.
const VISION_EPS: f64 = 1e-6;

/// The MLP activations `phi_config.hidden_act` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `gelu_new` (PhiConfig's default), `gelu_pytorch_tanh`, `gelu_fast`: the tanh form.
    GeluTanh,
    /// `gelu`: the exact (erf) form.
    Gelu,
}

impl Act {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::GeluTanh => x.gelu(),
            Act::Gelu => x.gelu_erf(),
        }
    }
}

/// The decoder's configuration: `config.json`'s `phi_config` over `PhiConfig`'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Act,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
}

impl Default for TextConfig {
    /// `PhiConfig()` of the reference's `configuration_moondream.py`: the real model's sizes.
    fn default() -> Self {
        Self {
            vocab_size: 51200,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 24,
            num_attention_heads: 32,
            hidden_act: Act::GeluTanh,
            max_position_embeddings: 2048,
            layer_norm_eps: 1e-5,
            rope_theta: 10000.0,
            partial_rotary_factor: 0.5,
        }
    }
}

impl TextConfig {
    /// From the whole `config.json`: the keys of its `phi_config` (of the top level when there is
    /// none, as the reference's `MoondreamConfig` does), the defaults for the rest. `file` names
    /// the file in errors.
    pub fn from_config(config: &serde_json::Value, file: &str) -> super::Result<Self> {
        Self::read(config, file).map_err(super::Error::Unsupported)
    }

    /// [`TextConfig::from_config`], its messages naming the file.
    fn read(config: &serde_json::Value, file: &str) -> std::result::Result<Self, String> {
        let (phi, at) = match config.get("phi_config") {
            Some(p) => (p, "phi_config."),
            None => (config, ""),
        };
        if !phi.is_object() {
            return Err(format!(
                "{file}: `phi_config` is not an object (expected moondream2's phi_config)"
            ));
        }
        let mut c = TextConfig::default();
        let size = |key: &str, into: &mut usize| -> std::result::Result<(), String> {
            match phi.get(key) {
                None | Some(serde_json::Value::Null) => Ok(()),
                Some(v) => match v.as_u64() {
                    Some(n) if n > 0 => {
                        *into = n as usize;
                        Ok(())
                    }
                    _ => Err(format!(
                        "{file}: {at}{key} is {v} (expected a positive integer)"
                    )),
                },
            }
        };
        let float = |key: &str, into: &mut f64| -> std::result::Result<(), String> {
            match phi.get(key) {
                None | Some(serde_json::Value::Null) => Ok(()),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x > 0.0 => {
                        *into = x;
                        Ok(())
                    }
                    _ => Err(format!(
                        "{file}: {at}{key} is {v} (expected a positive number)"
                    )),
                },
            }
        };
        size("vocab_size", &mut c.vocab_size)?;
        size("hidden_size", &mut c.hidden_size)?;
        size("intermediate_size", &mut c.intermediate_size)?;
        size("num_hidden_layers", &mut c.num_hidden_layers)?;
        size("num_attention_heads", &mut c.num_attention_heads)?;
        size("max_position_embeddings", &mut c.max_position_embeddings)?;
        float("layer_norm_eps", &mut c.layer_norm_eps)?;
        float("rope_theta", &mut c.rope_theta)?;
        float("partial_rotary_factor", &mut c.partial_rotary_factor)?;
        if let Some(v) = phi.get("hidden_act").filter(|v| !v.is_null()) {
            c.hidden_act = match v.as_str() {
                Some("gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Act::GeluTanh,
                Some("gelu") => Act::Gelu,
                _ => {
                    return Err(format!(
                        "{file}: {at}hidden_act is {v} (expected one of: gelu_new, gelu_pytorch_tanh, gelu_fast, gelu)"
                    ));
                }
            };
        }
        let mut kv_heads = c.num_attention_heads;
        size("num_key_value_heads", &mut kv_heads)?;
        if kv_heads != c.num_attention_heads {
            return Err(format!(
                "{file}: {at}num_key_value_heads is {kv_heads} (moondream2's fused Wqkv needs it equal to num_attention_heads, {})",
                c.num_attention_heads
            ));
        }
        for (key, why) in [
            (
                "qk_layernorm",
                "expected false: moondream2 has no query/key norms",
            ),
            (
                "tie_word_embeddings",
                "expected false: moondream2 has its own LM head",
            ),
        ] {
            if phi
                .get(key)
                .is_some_and(|v| v.as_bool() != Some(false) && !v.is_null())
            {
                return Err(format!("{file}: {at}{key} is {} ({why})", phi[key]));
            }
        }
        if phi.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "{file}: {at}rope_scaling is {} (expected null: scaled rotary embeddings are not supported)",
                phi["rope_scaling"]
            ));
        }
        if c.hidden_size % c.num_attention_heads != 0 {
            return Err(format!(
                "{file}: {at}hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            ));
        }
        let rot = c.rotary_dim();
        if rot % 2 != 0 || rot > c.head_size() {
            return Err(format!(
                "{file}: {at}partial_rotary_factor {} gives {rot} rotary dimensions of {} (expected an even number at most the head size)",
                c.partial_rotary_factor,
                c.head_size()
            ));
        }
        Ok(c)
    }

    pub(crate) fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// `int(partial_rotary_factor * head_size)`, as Python truncates it.
    pub fn rotary_dim(&self) -> usize {
        (self.partial_rotary_factor * self.head_size() as f64) as usize
    }
}

/// The vision tower's and projection's sizes, read off the tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionDims {
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp: usize,
    pub projection: usize,
}

impl VisionDims {
    /// The real model's: SigLIP so400m (1152 wide, 27 blocks, 16 heads, MLP 4304) and an
    /// 8192-wide projection.
    pub const REAL: VisionDims = VisionDims {
        width: 1152,
        depth: 27,
        heads: 16,
        mlp: 4304,
        projection: 8192,
    };

    /// From the shapes of the checkpoint's tensors (`shape(name)`, names as in the checkpoint):
    /// the width from `patch_embed.linear.weight` (`[width, 3·14·14]`), the depth from the blocks
    /// present, the MLP width from block 0's `fc1`, the projection's from its `fc1`; heads =
    /// width / 72.
    pub fn from_shapes(
        shape: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> std::result::Result<Self, String> {
        const V: &str = "vision_encoder.encoder.model.visual";
        let get = |name: &str, rank: usize| -> std::result::Result<Vec<usize>, String> {
            match shape(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(format!(
                    "tensor {name} has shape {s:?} (expected {rank} dimensions)"
                )),
                None => Err(format!(
                    "the weights have no tensor {name} (expected moondream2's 2024 layout)"
                )),
            }
        };
        let patch = get(&format!("{V}.patch_embed.linear.weight"), 2)?;
        let (width, inputs) = (patch[0], patch[1]);
        if inputs != 3 * PATCH * PATCH {
            return Err(format!(
                "tensor {V}.patch_embed.linear.weight has shape {patch:?} (expected [width, {}]: 14×14 RGB patches)",
                3 * PATCH * PATCH
            ));
        }
        if width % VISION_HEAD_SIZE != 0 {
            return Err(format!(
                "the vision tower is {width} wide, not a multiple of moondream2's head size {VISION_HEAD_SIZE}"
            ));
        }
        let depth = (0..)
            .take_while(|i| shape(&format!("{V}.blocks.{i}.norm1.weight")).is_some())
            .count();
        if depth == 0 {
            return Err(format!(
                "the weights have no tensor {V}.blocks.0.norm1.weight (expected moondream2's 2024 layout)"
            ));
        }
        let mlp = get(&format!("{V}.blocks.0.mlp.fc1.weight"), 2)?[0];
        let projection = get("vision_encoder.projection.mlp.fc1.weight", 2)?[0];
        Ok(Self {
            width,
            depth,
            heads: width / VISION_HEAD_SIZE,
            mlp,
            projection,
        })
    }
}

/// The shapes of the tensors in safetensors files, from their headers (nothing else is read).
fn tensor_shapes(
    files: &[std::path::PathBuf],
) -> std::result::Result<HashMap<String, Vec<usize>>, String> {
    let mut shapes = HashMap::new();
    for path in files {
        let bad = |why: String| format!("{}: {why} (expected a safetensors file)", path.display());
        let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|e| bad(format!("cannot read the header length: {e}")))?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(bad(format!("a header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header)
            .map_err(|e| bad(format!("cannot read the header: {e}")))?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let shape = info
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad(format!("tensor {name} has no shape")))?;
            shapes.insert(name, shape);
        }
    }
    Ok(shapes)
}

fn linear(vb: &VarBuilder, inputs: usize, outputs: usize, name: &str) -> Result<Linear> {
    let vb = vb.pp(name);
    Ok(Linear::new(
        vb.get((outputs, inputs), "weight")?,
        Some(vb.get(outputs, "bias")?),
    ))
}

fn layer_norm(vb: &VarBuilder, size: usize, eps: f64, name: &str) -> Result<LayerNorm> {
    let vb = vb.pp(name);
    Ok(LayerNorm::new(
        vb.get(size, "weight")?,
        vb.get(size, "bias")?,
        eps,
    ))
}

struct VisionBlock {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

struct Vision {
    patch: Linear,
    pos: Tensor,
    blocks: Vec<VisionBlock>,
    norm: LayerNorm,
    proj_fc1: Linear,
    proj_fc2: Linear,
    dims: VisionDims,
}

impl Vision {
    fn load(dims: &VisionDims, out: usize, vb: &VarBuilder) -> Result<Self> {
        let v = vb.pp("encoder.model.visual");
        let w = dims.width;
        let blocks = (0..dims.depth)
            .map(|i| {
                let b = v.pp(format!("blocks.{i}"));
                Ok(VisionBlock {
                    norm1: layer_norm(&b, w, VISION_EPS, "norm1")?,
                    qkv: linear(&b, w, 3 * w, "attn.qkv")?,
                    proj: linear(&b, w, w, "attn.proj")?,
                    norm2: layer_norm(&b, w, VISION_EPS, "norm2")?,
                    fc1: linear(&b, w, dims.mlp, "mlp.fc1")?,
                    fc2: linear(&b, dims.mlp, w, "mlp.fc2")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let p = vb.pp("projection.mlp");
        Ok(Self {
            patch: linear(&v, 3 * PATCH * PATCH, w, "patch_embed.linear")?,
            pos: v.get((1, IMAGE_TOKENS, w), "pos_embed")?,
            blocks,
            norm: layer_norm(&v, w, VISION_EPS, "norm")?,
            proj_fc1: linear(&p, w, dims.projection, "fc1")?,
            proj_fc2: linear(&p, dims.projection, out, "fc2")?,
            dims: dims.clone(),
        })
    }

    /// `[b, 3, 378, 378]` normalised pixels to `[b, 729, text width]` image embeddings.
    fn forward(&self, px: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = px.dims4()?;
        let (gh, gw) = (h / PATCH, w / PATCH);
        let patches = px
            .reshape((b, c, gh, PATCH, gw, PATCH))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, gh * gw, c * PATCH * PATCH))?;
        let mut x = self.patch.forward(&patches)?.broadcast_add(&self.pos)?;
        let (heads, width) = (self.dims.heads, self.dims.width);
        let n = gh * gw;
        let scale = 1.0 / (VISION_HEAD_SIZE as f64).sqrt();
        for blk in &self.blocks {
            let qkv = blk
                .qkv
                .forward(&blk.norm1.forward(&x)?)?
                .reshape((b, n, 3, heads, VISION_HEAD_SIZE))?
                .permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?;
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, width))?;
            x = (x + blk.proj.forward(&y)?)?;
            let y = blk.fc1.forward(&blk.norm2.forward(&x)?)?.gelu_erf()?;
            x = (x + blk.fc2.forward(&y)?)?;
        }
        let x = self.norm.forward(&x)?;
        self.proj_fc2
            .forward(&self.proj_fc1.forward(&x)?.gelu_erf()?)
    }
}

struct TextLayer {
    ln: LayerNorm,
    wqkv: Linear,
    out_proj: Linear,
    fc1: Linear,
    fc2: Linear,
    cache: Option<(Tensor, Tensor)>,
}

struct Text {
    wte: Embedding,
    layers: Vec<TextLayer>,
    head_ln: LayerNorm,
    head: Linear,
    cfg: TextConfig,
    cos: Tensor,
    sin: Tensor,
    pos: usize,
}

/// cos and sin tables, `[positions, rotary_dim / 2]`, computed in f32 as the reference does.
fn rotary_tables(cfg: &TextConfig, positions: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let dim = cfg.rotary_dim();
    let theta = cfg.rope_theta as f32;
    let inv: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / dim as f32))
        .collect();
    let mut freqs = Vec::with_capacity(positions * inv.len());
    for p in 0..positions {
        freqs.extend(inv.iter().map(|f| p as f32 * f));
    }
    let freqs = Tensor::from_vec(freqs, (positions, inv.len()), dev)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

impl Text {
    fn load(cfg: &TextConfig, vb: &VarBuilder) -> Result<Self> {
        let t = vb.pp("transformer");
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = t.pp(format!("h.{i}"));
                Ok(TextLayer {
                    ln: layer_norm(&l, h, eps, "ln")?,
                    wqkv: linear(&l, h, 3 * h, "mixer.Wqkv")?,
                    out_proj: linear(&l, h, h, "mixer.out_proj")?,
                    fc1: linear(&l, h, cfg.intermediate_size, "mlp.fc1")?,
                    fc2: linear(&l, cfg.intermediate_size, h, "mlp.fc2")?,
                    cache: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (cos, sin) = rotary_tables(cfg, cfg.max_position_embeddings, vb.device())?;
        let lm = vb.pp("lm_head");
        Ok(Self {
            wte: Embedding::new(t.get((cfg.vocab_size, h), "embd.wte.weight")?, h),
            layers,
            head_ln: layer_norm(&lm, h, eps, "ln")?,
            head: linear(&lm, h, cfg.vocab_size, "linear")?,
            cfg: cfg.clone(),
            cos,
            sin,
            pos: 0,
        })
    }

    /// Rotary embedding of the first `rotary_dim` dimensions of `x` (`[b, heads, t, head]`)
    /// at positions `pos..pos + t`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rot = self.cfg.rotary_dim();
        let hd = self.cfg.head_size();
        if rot == 0 {
            return Ok(x.clone());
        }
        let r = candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, cos, sin)?;
        if rot == hd {
            return Ok(r);
        }
        Tensor::cat(&[&r, &x.narrow(D::Minus1, rot, hd - rot)?], D::Minus1)
    }

    /// Runs `x` (`[1, t, hidden]`) through the stack after what the cache holds; returns the
    /// logits at the last position, `[vocab]`, f32.
    fn forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = self.cfg.num_attention_heads;
        let hd = self.cfg.head_size();
        let end = self.pos + t;
        if end > self.cos.dim(0)? {
            let (cos, sin) = rotary_tables(&self.cfg, end.next_power_of_two(), x.device())?;
            self.cos = cos.to_dtype(self.cos.dtype())?;
            self.sin = sin.to_dtype(self.sin.dtype())?;
        }
        let cos = self.cos.narrow(0, self.pos, t)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, self.pos, t)?.to_dtype(x.dtype())?;
        let mask = if t > 1 {
            let pos = self.pos;
            let m: Vec<f32> = (0..t)
                .flat_map(|i| {
                    (0..end).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (t, end), x.device())?)
        } else {
            None
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = x.clone();
        for i in 0..self.layers.len() {
            let (ln, wqkv, out_proj, fc1, fc2) = {
                let l = &self.layers[i];
                (&l.ln, &l.wqkv, &l.out_proj, &l.fc1, &l.fc2)
            };
            let hs = ln.forward(&x)?;
            let qkv = wqkv.forward(&hs)?;
            let split = |k: usize| -> Result<Tensor> {
                qkv.narrow(D::Minus1, k * h, h)?
                    .reshape((b, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = self.rotate(&split(0)?, &cos, &sin)?;
            let k = self.rotate(&split(1)?, &cos, &sin)?;
            let v = split(2)?;
            let (k, v) = match &self.layers[i].cache {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let scores = (q
                .to_dtype(DType::F32)?
                .matmul(&k.to_dtype(DType::F32)?.t()?)?
                * scale)?;
            let scores = match &mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let att = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
            let attn = out_proj.forward(&y)?;
            let ff = fc2.forward(&self.cfg.hidden_act.apply(&fc1.forward(&hs)?)?)?;
            let next = ((attn + ff)? + &x)?;
            self.layers[i].cache = Some((k, v));
            x = next;
        }
        self.pos = end;
        let last = x.narrow(1, t - 1, 1)?;
        self.head
            .forward(&self.head_ln.forward(&last)?)?
            .flatten_all()?
            .to_dtype(DType::F32)
    }

    fn clear(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            l.cache = None;
        }
    }
}

/// The whole model: vision tower + projection, and the decoder with its KV cache.
pub struct Model {
    vision: Vision,
    text: Text,
}

impl Model {
    /// Builds from `vb` holding the checkpoint's `vision_encoder.*` and `text_model.*`.
    pub fn load(text: &TextConfig, vision: &VisionDims, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            vision: Vision::load(vision, text.hidden_size, &vb.pp("vision_encoder"))?,
            text: Text::load(text, &vb.pp("text_model"))?,
        })
    }

    /// `[b, 3, 378, 378]` pixels to `[b, 729, hidden]` image embeddings.
    pub(crate) fn encode_image(&self, px: &Tensor) -> Result<Tensor> {
        self.vision.forward(px)
    }

    /// Token embeddings, `[1, n, hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.text.wte.embeddings().device())?.unsqueeze(0)?;
        self.text.wte.forward(&ids)
    }

    /// Empties the cache and runs the prompt's embeddings (`[1, n, hidden]`); the logits after it.
    pub fn prefill(&mut self, embeds: &Tensor) -> Result<Tensor> {
        self.text.clear();
        self.text.forward(embeds)
    }

    /// Feeds one token; the logits after it.
    pub fn step(&mut self, token: u32) -> Result<Tensor> {
        let x = self.embed(&[token])?;
        self.text.forward(&x)
    }

    pub fn text_config(&self) -> &TextConfig {
        &self.text.cfg
    }
}

/// Loads the model of a folder laid out like the repo from its weights `vb`: `config.json`'s
/// text sizes, the vision sizes from the weights' shapes.
pub fn load(dir: &Path, vb: VarBuilder) -> super::Result<Model> {
    use super::Error;
    let config: serde_json::Value = super::read_json(dir, "config.json")?;
    let file = dir.join("config.json");
    let text = TextConfig::from_config(&config, &file.display().to_string())?;
    let files = super::weight_files(dir)?;
    let shapes = tensor_shapes(&files).map_err(Error::Unsupported)?;
    let vision =
        VisionDims::from_shapes(|n| shapes.get(n).cloned()).map_err(|e| Error::invalid(dir, e))?;
    tracing::debug!(?text, ?vision, "moondream2 (2024) sizes");
    // Not `Error::Weights`: this message has its own shape, kept as users saw it.
    Model::load(&text, &vision, vb).map_err(|e| {
        Error::unsupported(format!(
            "the weights in {} do not match moondream2's 2024 layout with {} ({e})",
            dir.display(),
            file.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotary_dimension_truncates_like_python() {
        let c = TextConfig {
            hidden_size: 96,
            num_attention_heads: 2,
            partial_rotary_factor: 0.4,
            ..TextConfig::default()
        };
        // int(0.4 * 48) = 19
        assert_eq!(c.rotary_dim(), 19);
        assert_eq!(TextConfig::default().rotary_dim(), 32);
    }
}

//! A SigLIP vision encoder (transformers' `Idefics3VisionTransformer` / `SiglipVisionTransformer`
//! without the pooling head) from candle_nn's pieces, with two CPU speed-ups over
//! candle-transformers' `siglip`: the queries are scaled before the attention product (n·d
//! multiplications instead of n²), and the tanh-approximated GELU runs on every core in one pass
//! (candle's own `gelu` is one libm `tanhf` per element on one thread: ~18% of a SmolVLM answer).
//! Its linear layers come from a [`Quantizer`] (dense, or 8/4-bit: [`super::quant`]).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Conv2d, LayerNorm, VarBuilder};
use rayon::prelude::*;

use super::quant::{QLinear, Quantizer};

/// The encoder's dimensions (a `vision_config`).
#[derive(Debug, Clone)]
pub(crate) struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub channels: usize,
    pub image_size: usize,
    pub patch: usize,
    pub eps: f64,
    pub act: Act,
}

/// The MLP activations vision configs name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Act {
    /// `gelu_pytorch_tanh`
    GeluTanh,
    /// `gelu` (erf)
    Gelu,
}

impl Act {
    pub(crate) fn parse(name: &str) -> super::Result<Act> {
        match name {
            "gelu_pytorch_tanh" => Ok(Act::GeluTanh),
            "gelu" => Ok(Act::Gelu),
            other => Err(super::Error::unsupported(format!(
                "vision_config.hidden_act `{other}` is not supported (gelu_pytorch_tanh, gelu)"
            ))),
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, written as `x / (1 + exp(-2z))` (the same
/// function: 1 + tanh(z) = 2·sigmoid(2z)), which needs one `exp` and stays exact at both tails.
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    let z = 0.797_884_6_f32 * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * z).exp())
}

struct ParallelGeluTanh;

impl CustomOp1 for ParallelGeluTanh {
    fn name(&self) -> &'static str {
        "parallel-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("parallel-gelu-tanh: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("parallel-gelu-tanh: contiguous input only");
        };
        let src = &v[start..end];
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(o, i)| {
                for (o, x) in o.iter_mut().zip(i) {
                    *o = gelu_tanh(*x);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The activation, with the parallel tanh GELU on CPU f32 (also used by Moondream's encoders).
pub(crate) fn activate(x: &Tensor, act: Act) -> Result<Tensor> {
    match act {
        Act::Gelu => x.gelu_erf(),
        Act::GeluTanh if x.device().is_cpu() && x.dtype() == DType::F32 => {
            x.contiguous()?.apply_op1_no_bwd(&ParallelGeluTanh)
        }
        Act::GeluTanh => x.gelu(),
    }
}

struct Layer {
    ln1: LayerNorm,
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    ln2: LayerNorm,
    fc1: QLinear,
    fc2: QLinear,
}

pub(crate) struct VisionEncoder {
    patch: Conv2d,
    position: Tensor,
    layers: Vec<Layer>,
    post_ln: LayerNorm,
    dims: Dims,
}

impl VisionEncoder {
    /// Loads from `vb` holding `embeddings`, `encoder.layers.N` and `post_layernorm`, the linear
    /// layers as `qz` makes them (the patch convolution and position embeddings stay dense).
    pub(crate) fn load(dims: &Dims, vb: VarBuilder, qz: &Quantizer) -> Result<Self> {
        let d = dims.hidden;
        let e = vb.pp("embeddings");
        let patch = candle_nn::conv2d(
            dims.channels,
            d,
            dims.patch,
            candle_nn::Conv2dConfig {
                stride: dims.patch,
                ..Default::default()
            },
            e.pp("patch_embedding"),
        )?;
        let n = (dims.image_size / dims.patch).pow(2);
        let position = e.pp("position_embedding").get((n, d), "weight")?;
        let mut layers = Vec::with_capacity(dims.layers);
        for i in 0..dims.layers {
            let l = vb.pp(format!("encoder.layers.{i}"));
            let a = l.pp("self_attn");
            layers.push(Layer {
                ln1: candle_nn::layer_norm(d, dims.eps, l.pp("layer_norm1"))?,
                q: qz.linear(d, d, true, a.pp("q_proj"))?,
                k: qz.linear(d, d, true, a.pp("k_proj"))?,
                v: qz.linear(d, d, true, a.pp("v_proj"))?,
                o: qz.linear(d, d, true, a.pp("out_proj"))?,
                ln2: candle_nn::layer_norm(d, dims.eps, l.pp("layer_norm2"))?,
                fc1: qz.linear(d, dims.intermediate, true, l.pp("mlp.fc1"))?,
                fc2: qz.linear(dims.intermediate, d, true, l.pp("mlp.fc2"))?,
            });
        }
        let post_ln = candle_nn::layer_norm(d, dims.eps, vb.pp("post_layernorm"))?;
        Ok(Self {
            patch,
            position,
            layers,
            post_ln,
            dims: dims.clone(),
        })
    }

    /// `[b, 3, S, S]` pixels to `[b, patches, hidden]` (full images: every patch is real).
    pub(crate) fn forward(&self, px: &Tensor) -> Result<Tensor> {
        let (heads, d) = (self.dims.heads, self.dims.hidden);
        let hd = d / heads;
        let x = self.patch.forward(px)?.flatten_from(2)?.transpose(1, 2)?;
        let mut x = x.broadcast_add(&self.position)?;
        let (b, n, _) = x.dims3()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, n, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        for l in &self.layers {
            let h = l.ln1.forward(&x)?;
            let q = split((l.q.forward(&h)? * scale)?)?;
            let k = split(l.k.forward(&h)?)?;
            let v = split(l.v.forward(&h)?)?;
            let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
            x = (x + l.o.forward(&y)?)?;
            let h = l.ln2.forward(&x)?;
            let h = activate(&l.fc1.forward(&h)?, self.dims.act)?;
            x = (x + l.fc2.forward(&h)?)?;
        }
        self.post_ln.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parallel_gelu_is_the_tanh_gelu() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 / 400.0).collect();
        let t = Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let fast: Vec<f32> = activate(&t, Act::GeluTanh).unwrap().to_vec1().unwrap();
        for (x, f) in xs.iter().zip(fast) {
            let x = *x as f64;
            let reference = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (f as f64 - reference).abs() < 1e-6,
                "gelu({x}) = {f}, expected {reference}"
            );
        }
        assert_eq!(gelu_tanh(-100.0), 0.0);
        assert_eq!(gelu_tanh(100.0), 100.0);
    }
}

//! The 2025 Moondream2's vision side: a SigLIP-shaped ViT over 378-px crops, the stitching of
//! the local crops' features, the pooling back to 27 × 27, and the projection into the text
//! model's width.
//!
//! Reference: vikhyat/moondream `moondream/torch/vision.py` (`create_patches`, `vision_encoder`,
//! `vision_projection`), `layers.py` (`attn`, `mlp`, `layer_norm`) and `moondream.py`
//! (`_run_vision_encoder`) at commit 44146f1. Weight names are the Hub files'
//! `model.vision.*`.
//!
//! What the reference does, as ported here:
//! - Patches are flattened **(channel, row, column)** within a patch (the `Linear` patch
//!   embedding of 588 inputs), patches row-major over the 27 × 27 grid; `pos_emb` is added.
//! - Pre-LN blocks `x += attn(ln1(x)); x += mlp(ln2(x))`; attention with one fused `qkv`
//!   projection split q | k | v, unmasked, scale 1/√head_dim; MLP with the tanh GELU; LayerNorm
//!   eps 1e-5 everywhere; `post_ln` at the end.
//! - Crop 0 (global) gives the global features; crops 1.. are stitched (see
//!   [`super::crops::stitch_layout`]) and average-pooled to 27 × 27 with PyTorch's bins. The
//!   pooling is computed in f32 as two matrix products (pooling is separable), whatever the
//!   model's dtype.
//! - Projection: `[global | pooled]` (feature axis) → fc1 → tanh GELU → fc2.
//!
//! Crops are encoded one at a time (the reference batches them): the same arithmetic per crop,
//! with a peak memory of one crop's attention.

use candle_core::{DType, IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::config::{GRID, PATCH, VisionConfig};
use super::crops::{pool_matrix, stitch_layout};
use crate::backend::candle::quant::{QLinear, Quantizer};
use crate::backend::candle::siglip::{Act, activate};

struct Block {
    ln1: LayerNorm,
    qkv: QLinear,
    proj: QLinear,
    ln2: LayerNorm,
    fc1: QLinear,
    fc2: QLinear,
}

pub struct Vision {
    patch_emb: QLinear,
    /// `[729, enc_dim]`.
    pos_emb: Tensor,
    blocks: Vec<Block>,
    post_ln: LayerNorm,
    fc1: QLinear,
    fc2: QLinear,
    heads: usize,
    dim: usize,
    overlap_margin: usize,
}

/// Every stage of the image's way to embeddings (the tests compare each with the reference).
pub struct Stages {
    /// `[crops, 729, enc_dim]`.
    pub encoder_out: Tensor,
    /// The local crops' features stitched, `[H, W, enc_dim]`.
    pub stitched: Tensor,
    /// `[729, enc_dim]`, row-major over the 27 × 27 grid.
    pub pooled: Tensor,
    /// The image embeddings, `[729, text dim]`.
    pub embeddings: Tensor,
}

pub(super) const EPS: f64 = 1e-5;

impl Vision {
    /// Loads `model.vision.*` (the `vb` given is at `model.vision`), the linear layers as `q`
    /// makes them.
    pub fn load(c: &VisionConfig, vb: VarBuilder, q: &Quantizer) -> Result<Self> {
        let d = c.enc_dim;
        let patch_emb = q.linear(3 * PATCH * PATCH, d, true, vb.pp("patch_emb"))?;
        let pos_emb = vb.get((1, GRID * GRID, d), "pos_emb")?.squeeze(0)?;
        let mut blocks = Vec::with_capacity(c.enc_n_layers);
        for i in 0..c.enc_n_layers {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(Block {
                ln1: candle_nn::layer_norm(d, EPS, b.pp("ln1"))?,
                qkv: q.linear(d, 3 * d, true, b.pp("attn.qkv"))?,
                proj: q.linear(d, d, true, b.pp("attn.proj"))?,
                ln2: candle_nn::layer_norm(d, EPS, b.pp("ln2"))?,
                fc1: q.linear(d, c.enc_ff_dim, true, b.pp("mlp.fc1"))?,
                fc2: q.linear(c.enc_ff_dim, d, true, b.pp("mlp.fc2"))?,
            });
        }
        Ok(Self {
            patch_emb,
            pos_emb,
            blocks,
            post_ln: candle_nn::layer_norm(d, EPS, vb.pp("post_ln"))?,
            fc1: q.linear(2 * d, c.proj_inner_dim, true, vb.pp("proj_mlp.fc1"))?,
            fc2: q.linear(
                c.proj_inner_dim,
                c.proj_out_dim,
                true,
                vb.pp("proj_mlp.fc2"),
            )?,
            heads: c.enc_n_heads,
            dim: d,
            overlap_margin: c.overlap_margin,
        })
    }

    /// One crop `[3, 378, 378]` to its features `[729, enc_dim]`.
    fn encode_crop(&self, px: &Tensor) -> Result<Tensor> {
        let (d, heads) = (self.dim, self.heads);
        let hd = d / heads;
        let n = GRID * GRID;
        // [3, 27, 14, 27, 14] -> [27 (gy), 27 (gx), 3, 14 (py), 14 (px)] -> [729, 588].
        let patches = px
            .reshape((3, GRID, PATCH, GRID, PATCH))?
            .permute((1, 3, 0, 2, 4))?
            .contiguous()?
            .reshape((1, n, 3 * PATCH * PATCH))?;
        let mut x = self
            .patch_emb
            .forward(&patches)?
            .broadcast_add(&self.pos_emb)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((1, n, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        for b in &self.blocks {
            let h = b.ln1.forward(&x)?;
            let qkv = b.qkv.forward(&h)?;
            let q = split((qkv.narrow(2, 0, d)? * scale)?)?;
            let k = split(qkv.narrow(2, d, d)?)?;
            let v = split(qkv.narrow(2, 2 * d, d)?)?;
            let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, n, d))?;
            x = (x + b.proj.forward(&y)?)?;
            let h = b.ln2.forward(&x)?;
            let h = activate(&b.fc1.forward(&h)?, Act::GeluTanh)?;
            x = (x + b.fc2.forward(&h)?)?;
        }
        self.post_ln.forward(&x)?.squeeze(0)
    }

    /// Crops `[n, 3, 378, 378]` (global first, then `tiling` local crops row-major) to every
    /// stage up to the image embeddings.
    pub fn forward(&self, crops: &Tensor, tiling: (usize, usize)) -> Result<Stages> {
        let n = crops.dim(0)?;
        if n != 1 + tiling.0 * tiling.1 {
            candle_core::bail!(
                "{n} crops for a {}x{} tiling (expected {})",
                tiling.0,
                tiling.1,
                1 + tiling.0 * tiling.1
            );
        }
        let feats = (0..n)
            .map(|i| self.encode_crop(&crops.i(i)?))
            .collect::<Result<Vec<_>>>()?;
        let encoder_out = Tensor::stack(&feats, 0)?;
        let (pieces, (gh, gw)) = stitch_layout(tiling, self.overlap_margin);
        let mut strips = Vec::with_capacity(tiling.0);
        for ty in 0..tiling.0 {
            let mut row = Vec::with_capacity(tiling.1);
            for tx in 0..tiling.1 {
                let k = ty * tiling.1 + tx;
                let p = &pieces[k];
                let tile = feats[1 + k].reshape((GRID, GRID, self.dim))?;
                row.push(tile.narrow(0, p.rows.start, p.rows.len())?.narrow(
                    1,
                    p.cols.start,
                    p.cols.len(),
                )?);
            }
            strips.push(Tensor::cat(&row, 1)?);
        }
        let stitched = Tensor::cat(&strips, 0)?;
        debug_assert_eq!(stitched.dims3()?, (gh, gw, self.dim));
        let pooled = self.pool(&stitched)?;
        let joined = Tensor::cat(&[&feats[0], &pooled], 1)?;
        let h = activate(&self.fc1.forward(&joined)?, Act::GeluTanh)?;
        let embeddings = self.fc2.forward(&h)?;
        Ok(Stages {
            encoder_out,
            stitched,
            pooled,
            embeddings,
        })
    }

    /// `adaptive_avg_pool2d` of a `[H, W, D]` grid to `[27 · 27, D]`, in f32.
    fn pool(&self, grid: &Tensor) -> Result<Tensor> {
        let (h, w, d) = grid.dims3()?;
        let dev = grid.device();
        let g = grid.to_dtype(DType::F32)?;
        let ph = Tensor::from_vec(pool_matrix(h, GRID), (GRID, h), dev)?;
        let pw = Tensor::from_vec(pool_matrix(w, GRID), (GRID, w), dev)?;
        // Rows: [27, H] x [H, W·D].
        let rows = ph.matmul(&g.reshape((h, w * d))?)?.reshape((GRID, w, d))?;
        // Columns: [27, W] x [W, 27·D], then back to [27 (y), 27 (x), D].
        let cols = pw.matmul(&rows.transpose(0, 1)?.contiguous()?.reshape((w, GRID * d))?)?;
        cols.reshape((GRID, GRID, d))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((GRID * GRID, d))?
            .to_dtype(grid.dtype())
    }
}

//! 8-bit and 4-bit weights in-process (`dtype = "q8_0"` or `"q4k"`): the linear layers (and the
//! text decoder's token embeddings) are quantized at load, from the checkpoint's own weights, into
//! candle's GGML block formats, and multiplied with candle's quantized matmul
//! ([`QMatMul`]). Activations, norms, biases, convolutions and attention stay f32.
//!
//! An architecture opts in by building its layers through a [`Quantizer`]:
//! [`Quantizer::linear`] instead of `candle_nn::linear`, [`Quantizer::embedding`] instead of
//! `candle_nn::embedding`, [`Quantizer::tied_head`] for an LM head that shares the embeddings.
//! A dense quantizer ([`Quantizer::new`] with `None`) builds exactly what candle_nn builds, so one
//! code path serves every precision. The loaders take a [`Precision`], which a candle `DType`
//! converts into, so `load(dir, DType::F32, &device)` keeps working.
//!
//! The formats (ggml's, as llama.cpp and GGUF files have them):
//! - **`q8_0`**: blocks of 32 weights along a row, each an i8 times one f16 scale: 8.5 bits a
//!   weight, 0.27× f32.
//! - **`q4k`** (ggml's Q4_K): super-blocks of 256 weights, eight sub-blocks of 32 with 6-bit
//!   scales and minimums, 4-bit values: 4.5 bits a weight, 0.14× f32.
//!
//! **A row whose width is not a multiple of the block** (q8_0: 32, q4k: 256) cannot be stored in
//! that format. Like llama.cpp's quantizer (`llama_tensor_get_type` in `src/llama-quant.cpp`,
//! ggml-org/llama.cpp; and `convert_hf_to_gguf.py` for `--outtype q8_0`), vlmtest then falls back
//! per tensor instead of refusing the model, and says so once per load through `tracing` (with
//! [`QuantSummary`] kept on the model for reports and tests):
//! - q4k → **q8_0** when the width is a multiple of 32. llama.cpp falls back to Q5_0 here; candle
//!   has no SIMD kernel for Q5_0 (a scalar loop, several times slower than f32 on the CPU), so
//!   vlmtest takes the next format candle does run fast, at 8.5 instead of 5.5 bits a weight.
//!   That matters: SmolVLM-256M's decoder is 576 wide (not a multiple of 256) and Moondream2's
//!   encoder 1152.
//! - q8_0 (or q4k) → **f32** when the width is not even a multiple of 32 (Moondream2's encoder
//!   MLP is 4304 wide). llama.cpp keeps such tensors in F16; vlmtest's dense layers are f32,
//!   the dtype of its activations (candle's CPU f16 matmul is slow).
//!
//! **The product.** candle's quantized matmul quantizes the input rows to 8 bits and takes dot
//! products block by block: for a few rows (decoding one token: 1 row) it reads 4–8× fewer bytes
//! than an f32 product and is 2–6× faster (measured on AVX2, one thread). For many rows (a prompt,
//! an image's patches) its q8_0 kernel without VNNI is ~2× slower than f32 GEMM, since it does
//! not tile the way GEMM does; there [`QLinear`] dequantizes the weight (in parallel, into a
//! transient f32 buffer) and runs the f32 GEMM, which costs one pass over the weight and keeps
//! the memory saving. Where candle has tiled kernels for the format (q4k on AVX2; q8_0 with
//! AVX-512-VNNI or AVX-VNNI, whose `vpdpbusd` does 8-bit products natively) it keeps its own
//! kernel at every size. See [`dequantize_above`].
//!
//! What is not supported gives an error at load naming the model, the dtype and what is
//! supported ([`unsupported`]): an architecture that has not opted in (PaliGemma, whose Gemma
//! decoder is candle-transformers'; Moondream2's 2024 layout). The vision towers built from
//! candle-transformers' CLIP (LLaVA-NeXT, Phi-3.5-V) stay f32 inside a quantized model; their
//! projectors are quantized. Every device candle builds for has the quantized matmul (CPU with
//! AVX2/AVX-512-VNNI/NEON kernels, CUDA, Metal), so the device is never the reason.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, QuantizedType};
use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use rayon::prelude::*;
use serde::Serialize;

/// A quantized weight format (`dtype = "q8_0"` / `"q4k"` in models.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    Q8_0,
    Q4K,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "q8_0",
            Quant::Q4K => "q4k",
        }
    }

    /// The formats tried for a tensor, best first (see the module documentation); a tensor none
    /// of them fits stays dense.
    fn formats(self) -> &'static [Format] {
        match self {
            Quant::Q8_0 => &[Format::Q8_0],
            Quant::Q4K => &[Format::Q4K, Format::Q8_0],
        }
    }
}

/// How a single tensor ended up stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    Q4K,
    Q8_0,
    F32,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Q4K => "q4k",
            Format::Q8_0 => "q8_0",
            Format::F32 => "f32",
        }
    }

    /// Weights per block: a row's width must be a multiple of it.
    pub fn block(self) -> usize {
        match self {
            Format::Q4K => 256,
            Format::Q8_0 => 32,
            Format::F32 => 1,
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Format::Q4K => GgmlDType::Q4K,
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::F32 => GgmlDType::F32,
        }
    }
}

/// The precision an architecture loads in: the dtype of its dense tensors and activations, and
/// the format of its linear layers when they are quantized (then `dtype` is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub dtype: DType,
    pub quant: Option<Quant>,
}

impl Precision {
    pub fn quantized(quant: Quant) -> Self {
        Self {
            dtype: DType::F32,
            quant: Some(quant),
        }
    }

    /// `f32`, `bf16`, `q4k`...
    pub fn name(&self) -> String {
        match self.quant {
            Some(q) => q.name().to_string(),
            None => format!("{:?}", self.dtype).to_lowercase(),
        }
    }
}

impl From<DType> for Precision {
    fn from(dtype: DType) -> Self {
        Self { dtype, quant: None }
    }
}

/// The error for a quantized dtype an architecture (or layout) has no quantized path for.
pub fn unsupported(what: &str, quant: Quant) -> String {
    format!(
        "dtype = \"{}\" is not supported for {what}: quantized weights work with arch smolvlm, llava-next, phi3-v and moondream2 (its 2025 layout); use dtype f32, f16 or bf16 here",
        quant.name()
    )
}

/// A linear layer `y = x·Wᵀ + b` whose weight is dense or quantized.
#[derive(Debug, Clone)]
pub enum QLinear {
    Dense(Linear),
    Quantized(Quantized),
}

/// A quantized weight `[out, in]` and its bias.
#[derive(Debug, Clone)]
pub struct Quantized {
    weight: Arc<QTensor>,
    matmul: QMatMul,
    bias: Option<Tensor>,
    format: Format,
    /// Input rows above which the product dequantizes the weight ([`dequantize_above`]).
    dequantize_above: usize,
}

impl Quantized {
    fn new(weight: QTensor, format: Format, bias: Option<Tensor>) -> Result<Self> {
        Self::shared(Arc::new(weight), format, bias)
    }

    fn shared(weight: Arc<QTensor>, format: Format, bias: Option<Tensor>) -> Result<Self> {
        let (n, _) = weight.shape().dims2()?;
        let dequantize_above = if weight.device().is_cpu() {
            dequantize_above(format, n)
        } else {
            usize::MAX
        };
        Ok(Self {
            matmul: QMatMul::from_arc(Arc::clone(&weight))?,
            weight,
            bias,
            format,
            dequantize_above,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = match self {
            QLinear::Dense(l) => return l.forward(x),
            QLinear::Quantized(q) => q,
        };
        let (n, k) = q.weight.shape().dims2()?;
        let rows = x.elem_count() / k.max(1);
        let y = if rows > q.dequantize_above {
            let w = dequantize(&q.weight, q.format)?;
            let mut dims = x.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            x.reshape((rows, k))?.matmul(&w.t()?)?.reshape(dims)?
        } else {
            // The quantized kernels read the input as one contiguous block.
            q.matmul.forward(&x.contiguous()?)?
        };
        match &q.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Input rows above which a CPU product with a weight of `format` (`out` rows) is faster as
/// dequantize + f32 GEMM than with candle's quantized kernel (see the module documentation):
/// 16 for q8_0 on x86 without VNNI (measured crossover on AVX2: 8–32 rows), and for q4k weights
/// whose output count is not a multiple of 16 (candle's tiled q4k kernel needs it); otherwise
/// never.
pub(crate) fn dequantize_above(format: Format, out: usize) -> usize {
    const ROWS: usize = 16;
    match format {
        Format::Q8_0
            if cfg!(target_arch = "x86_64")
                && !int8_dot().starts_with("avx512-vnni")
                && int8_dot() != "avx-vnni" =>
        {
            ROWS
        }
        Format::Q4K if cfg!(target_arch = "x86_64") && !out.is_multiple_of(16) => ROWS,
        _ => usize::MAX,
    }
}

/// The 8-bit dot-product instructions of this CPU that candle's quantized kernels use:
/// `avx512-vnni`, `avx-vnni`, `avx2` (x86), `neon` (aarch64) or `none`.
pub fn int8_dot() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vnni") {
            return "avx512-vnni";
        }
        if has!("avxvnni") && has!("avx2") {
            return "avx-vnni";
        }
        if has!("avx2") && has!("fma") {
            return "avx2";
        }
        "none"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "none"
    }
}

/// The f32 values of a quantized weight: on the CPU block rows in parallel, straight from the
/// tensor's blocks.
fn dequantize(w: &QTensor, format: Format) -> Result<Tensor> {
    if !w.device().is_cpu() {
        return w.dequantize(&w.device());
    }
    let (n, k) = w.shape().dims2()?;
    let data = w.data()?;
    let out = match format {
        Format::Q8_0 => dequantize_rows::<BlockQ8_0>(&data, k)?,
        Format::Q4K => dequantize_rows::<BlockQ4K>(&data, k)?,
        Format::F32 => candle_core::bail!("f32 is not a quantized format"),
    };
    Tensor::from_vec(out, (n, k), &Device::Cpu)
}

fn dequantize_rows<T: GgmlType>(bytes: &[u8], width: usize) -> Result<Vec<f32>> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        candle_core::bail!(
            "quantized weight: {} bytes do not hold whole blocks",
            bytes.len()
        );
    }
    // SAFETY: the bytes are a CPU QTensor's storage, a `Vec<T>` of ggml blocks (`#[repr(C)]`
    // structs of f16 and integer arrays, valid for any bit pattern); length and alignment are
    // checked above, and the slice does not outlive `bytes`.
    let blocks: &[T] =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) };
    let per_row = width / T::BLCK_SIZE;
    let mut out = vec![0f32; blocks.len() * T::BLCK_SIZE];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(blocks.par_chunks(per_row * ROWS_PER_TASK))
        .for_each(|(o, b)| T::to_float(b, o));
    Ok(out)
}

/// A token embedding table, dense or quantized (a lookup dequantizes the rows it picks).
#[derive(Debug, Clone)]
pub(crate) enum QEmbedding {
    Dense(Embedding),
    Quantized(Arc<QTensor>, Format),
}

impl QEmbedding {
    /// The embeddings of `ids` (any shape), `[..., hidden]`.
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            QEmbedding::Dense(e) => e.forward(ids),
            QEmbedding::Quantized(t, _) => t.embedding(ids),
        }
    }
}

/// What a load did with each weight it was asked to quantize.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QuantSummary {
    /// The dtype asked for: `q8_0` or `q4k`.
    pub requested: String,
    /// Tensors per format they were stored in (`q4k`, `q8_0`, `f32`).
    pub tensors: BTreeMap<String, usize>,
    /// Weights (parameters) per format.
    pub params: BTreeMap<String, usize>,
    /// Bytes of those tensors as stored.
    pub bytes: usize,
    /// Tensors stored in another format than the one asked for: `(name, row width, format)`.
    pub fallbacks: Vec<(String, usize, String)>,
}

impl QuantSummary {
    /// Tensors stored in `format`.
    pub fn count(&self, format: Format) -> usize {
        self.tensors.get(format.name()).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for QuantSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per: Vec<String> = self
            .tensors
            .iter()
            .map(|(k, n)| {
                let p = self.params.get(k).copied().unwrap_or(0);
                format!("{n} {k} ({:.1}M weights)", p as f64 / 1e6)
            })
            .collect();
        write!(
            f,
            "{}: {} tensors quantized at load: {}; {:.1} MiB",
            self.requested,
            self.tensors.values().sum::<usize>(),
            per.join(", "),
            self.bytes as f64 / (1024.0 * 1024.0)
        )
    }
}

/// Builds an architecture's linear layers and embeddings at one precision, and keeps the tally
/// of what it did (see the module documentation).
pub struct Quantizer {
    quant: Option<Quant>,
    tally: RefCell<QuantSummary>,
}

impl Quantizer {
    pub fn new(quant: Option<Quant>) -> Self {
        Self {
            quant,
            tally: RefCell::new(QuantSummary {
                requested: quant.map(|q| q.name().to_string()).unwrap_or_default(),
                ..Default::default()
            }),
        }
    }

    /// A dense quantizer: builds what candle_nn builds.
    pub fn dense() -> Self {
        Self::new(None)
    }

    pub fn quant(&self) -> Option<Quant> {
        self.quant
    }

    /// The format a `[rows, width]` weight is stored in.
    fn format_for(&self, width: usize) -> Format {
        let Some(q) = self.quant else {
            return Format::F32;
        };
        q.formats()
            .iter()
            .copied()
            .find(|f| width.is_multiple_of(f.block()))
            .unwrap_or(Format::F32)
    }

    /// Quantizes `w` (`[rows, width]`) as this quantizer's format allows, recording it under
    /// `name`; `None` when it stays dense.
    fn quantize(&self, w: &Tensor, name: &str) -> Result<Option<(QTensor, Format)>> {
        let Some(q) = self.quant else {
            return Ok(None);
        };
        let (rows, width) = w.dims2()?;
        let format = self.format_for(width);
        let mut t = self.tally.borrow_mut();
        *t.tensors.entry(format.name().into()).or_default() += 1;
        *t.params.entry(format.name().into()).or_default() += rows * width;
        if format != q.formats()[0] {
            t.fallbacks
                .push((name.to_string(), width, format.name().to_string()));
        }
        if format == Format::F32 {
            t.bytes += rows * width * 4;
            return Ok(None);
        }
        let qt = quantize(w, format)?;
        t.bytes += qt.storage_size_in_bytes();
        Ok(Some((qt, format)))
    }

    /// A linear layer `[in_dim → out_dim]` from `vb` (`weight`, and `bias` when `bias`), like
    /// `candle_nn::linear` / `linear_no_bias`.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<QLinear> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        self.linear_of(w, b, &format!("{}.weight", vb.prefix()))
    }

    /// A linear layer from tensors already loaded (`weight` `[out, in]`).
    pub(crate) fn linear_of(
        &self,
        weight: Tensor,
        bias: Option<Tensor>,
        name: &str,
    ) -> Result<QLinear> {
        match self.quantize(&weight, name)? {
            Some((q, format)) => Ok(QLinear::Quantized(Quantized::new(q, format, bias)?)),
            None => Ok(QLinear::Dense(Linear::new(weight, bias))),
        }
    }

    /// A token embedding table `[vocab, hidden]` from `vb` (`weight`), like
    /// `candle_nn::embedding`.
    pub(crate) fn embedding(
        &self,
        vocab: usize,
        hidden: usize,
        vb: VarBuilder,
    ) -> Result<QEmbedding> {
        let w = vb.get((vocab, hidden), "weight")?;
        self.embedding_from(w, &format!("{}.weight", vb.prefix()))
    }

    /// A token embedding table from a tensor already loaded.
    pub(crate) fn embedding_from(&self, table: Tensor, name: &str) -> Result<QEmbedding> {
        let hidden = table.dim(1)?;
        match self.quantize(&table, name)? {
            Some((q, format)) => Ok(QEmbedding::Quantized(Arc::new(q), format)),
            None => Ok(QEmbedding::Dense(Embedding::new(table, hidden))),
        }
    }

    /// An LM head tied to the embeddings: the same table, shared, not a copy.
    pub(crate) fn tied_head(&self, embed: &QEmbedding) -> Result<QLinear> {
        match embed {
            QEmbedding::Dense(e) => Ok(QLinear::Dense(Linear::new(e.embeddings().clone(), None))),
            QEmbedding::Quantized(t, format) => Ok(QLinear::Quantized(Quantized::shared(
                Arc::clone(t),
                *format,
                None,
            )?)),
        }
    }

    /// The tally, logged once (`None` for a dense load): how many tensors went to which format,
    /// and each width that had to fall back.
    pub fn finish(self, what: &str) -> Option<QuantSummary> {
        let q = self.quant?;
        let s = self.tally.into_inner();
        tracing::info!("{what}: {s}");
        let mut widths: BTreeMap<(usize, String), usize> = BTreeMap::new();
        for (_, width, format) in &s.fallbacks {
            *widths.entry((*width, format.clone())).or_default() += 1;
        }
        for ((width, format), n) in widths {
            tracing::info!(
                "{what}: {n} tensors with rows {width} wide stored as {format}: {} needs a multiple of {}",
                q.name(),
                q.formats()[0].block()
            );
        }
        Some(s)
    }
}

/// Rows quantized per task when a tensor is split across threads.
const ROWS_PER_TASK: usize = 64;

/// Quantizes a `[rows, width]` tensor into `format`. On the CPU the rows are quantized in
/// parallel (candle's `QTensor::quantize` runs on one thread: minutes for a 7B model), straight
/// from the tensor's f32 storage (no copy: at load, memory holds the quantized weights so far
/// plus one f32 tensor); the blocks are the same, row by row, as `QTensor::quantize` makes.
pub(crate) fn quantize(w: &Tensor, format: Format) -> Result<QTensor> {
    let (rows, width) = w.dims2()?;
    if !w.device().is_cpu() {
        return QTensor::quantize(w, format.ggml());
    }
    let w = w.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let data: &[f32] = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
        _ => candle_core::bail!("quantize: expected a contiguous f32 CPU tensor"),
    };
    let blocks: Box<dyn QuantizedType> = match format {
        Format::Q8_0 => Box::new(quantize_rows::<BlockQ8_0>(data, width)),
        Format::Q4K => Box::new(quantize_rows::<BlockQ4K>(data, width)),
        Format::F32 => candle_core::bail!("f32 is not a quantized format"),
    };
    QTensor::new(QStorage::Cpu(blocks), (rows, width))
}

fn quantize_rows<T: GgmlType>(data: &[f32], width: usize) -> Vec<T> {
    let per_row = width / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); data.len() / T::BLCK_SIZE];
    blocks
        .par_chunks_mut(per_row * ROWS_PER_TASK)
        .zip(data.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(b, x)| T::from_float(x, b));
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_quantization_makes_candles_blocks() {
        let w = Tensor::randn(0f32, 1.0, (300, 512), &Device::Cpu).unwrap();
        for f in [Format::Q8_0, Format::Q4K] {
            let ours = quantize(&w, f).unwrap();
            let theirs = QTensor::quantize(&w, f.ggml()).unwrap();
            assert_eq!(ours.data().unwrap(), theirs.data().unwrap(), "{f:?}");
            assert_eq!(ours.shape(), theirs.shape());
        }
    }

    #[test]
    fn widths_fall_back_as_documented() {
        let q4 = Quantizer::new(Some(Quant::Q4K));
        assert_eq!(q4.format_for(512), Format::Q4K);
        assert_eq!(q4.format_for(576), Format::Q8_0);
        assert_eq!(q4.format_for(4304), Format::F32);
        let q8 = Quantizer::new(Some(Quant::Q8_0));
        assert_eq!(q8.format_for(64), Format::Q8_0);
        assert_eq!(q8.format_for(4304), Format::F32);
        assert_eq!(Quantizer::dense().format_for(512), Format::F32);
    }

    #[test]
    fn dequantizing_gives_candles_values() {
        let w = Tensor::randn(0f32, 1.0, (130, 512), &Device::Cpu).unwrap();
        for f in [Format::Q8_0, Format::Q4K] {
            let q = quantize(&w, f).unwrap();
            let ours: Vec<f32> = dequantize(&q, f)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let theirs: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "{f:?}");
        }
    }

    /// Both products (the quantized kernel for a few rows, dequantize + GEMM for many) are close
    /// to the dense layer's, and to each other.
    #[test]
    fn a_quantized_linear_is_close_to_the_dense_one() {
        let dev = Device::Cpu;
        // Seeded normal values (candle's CPU randn cannot be seeded): the same inputs every run,
        // so the tolerances below are not crossed by chance (unseeded, q4k's error ranged over
        // 0.04-0.066 of the output's scale).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            let mut uniform = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            (0..n)
                .map(|_| {
                    let (u, v) = (uniform(), uniform());
                    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                    z as f32 * std
                })
                .collect()
        };
        let w = Tensor::from_vec(normal(96 * 256, 0.05), (96, 256), &dev).unwrap();
        let b = Tensor::from_vec(normal(96, 1.0), 96, &dev).unwrap();
        for rows in [3, 40] {
            let x = Tensor::from_vec(normal(rows * 256, 1.0), (1, rows, 256), &dev).unwrap();
            let dense = Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
            // Measured (AVX2): q8_0 0.0075 and 0.0037, q4k 0.046 and 0.050; room for other kernels.
            for (q, tol) in [(Quant::Q8_0, 0.015), (Quant::Q4K, 0.08)] {
                let qz = Quantizer::new(Some(q));
                let l = qz.linear_of(w.clone(), Some(b.clone()), "w").unwrap();
                let QLinear::Quantized(inner) = &l else {
                    panic!("{q:?} left the layer dense");
                };
                let y = l.forward(&x).unwrap();
                assert_eq!(y.dims(), dense.dims());
                let err = (&y - &dense).unwrap().abs().unwrap().max_all().unwrap();
                let scale = dense.abs().unwrap().max_all().unwrap();
                let rel = err.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
                eprintln!("{q:?}, {rows} rows: relative error {rel}");
                assert!(rel < tol, "{q:?}, {rows} rows: relative error {rel}");
                // The kernel not taken, on the same weight.
                let other = if rows > inner.dequantize_above {
                    inner.matmul.forward(&x.contiguous().unwrap()).unwrap()
                } else {
                    let wd = dequantize(&inner.weight, inner.format).unwrap();
                    x.broadcast_matmul(&wd.t().unwrap()).unwrap()
                };
                let other = other.broadcast_add(&b).unwrap();
                let gap = (&y - &other).unwrap().abs().unwrap().max_all().unwrap();
                let gap = gap.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
                assert!(
                    gap < tol,
                    "{q:?}, {rows} rows: the two products differ by {gap}"
                );
                let s = qz.finish("test").unwrap();
                assert_eq!(s.tensors.values().sum::<usize>(), 1);
            }
        }
    }
}

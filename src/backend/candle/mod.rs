//! In-process models on candle: one file per architecture behind the [`Vlm`] trait, and the
//! generation loop they share (greedy or sampled decoding, stop at EOS or `max_new_tokens`, a KV
//! cache that starts empty for every request, timings and token counts).

pub(crate) mod checkpoint;
pub(crate) mod eos;
pub(crate) mod error;
pub(crate) mod hub;
pub(crate) mod llama;
pub mod llava_next;
pub mod moondream;
pub mod moondream2024;
pub mod moondream2025;
pub mod paligemma;
pub(crate) mod phi3;
pub mod phi3_v;
pub mod phi3_v_image;
pub mod prompt;
pub mod quant;
pub(crate) mod siglip;
pub mod smolvlm;
pub mod template;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::{Backend, BackendError, Generation, LoadError, Request};
use crate::config::{CandleSpec, ModelSource, TokenizerSource};
use crate::kinds::{Arch, DeviceKind};

pub use checkpoint::Checkpoint;
pub use error::{Error, Result};

/// What an architecture's prefill returns: the prompt's length and the logits after it.
pub struct Prefill {
    pub prompt_tokens: usize,
    /// Logits at the last prompt position, `[vocab]`, f32.
    pub logits: Tensor,
}

/// One architecture: turns a conversation into its prompt (chat template, image tokens, pixel
/// values) and runs its decoder one token at a time.
pub trait Vlm: Send {
    /// Starts a new answer: the KV cache is emptied, the conversation encoded and run.
    fn prefill(&mut self, request: &Request) -> Result<Prefill>;
    /// Feeds the token just chosen; returns the logits for the next one (`[vocab]`, f32).
    fn step(&mut self, token: u32) -> candle_core::Result<Tensor>;
    /// Tokens that end an answer: those transformers' `generate()` stops on ([`eos`]).
    fn eos(&self) -> &[u32];
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    /// The answer's text from its tokens and the end token that stopped it, if one did. By
    /// default the tokens are decoded skipping special tokens and the end token is left out;
    /// an architecture whose reference post-processes its answers differently overrides this.
    fn answer_text(&self, tokens: &[u32], stop: Option<u32>) -> Result<String> {
        let _ = stop;
        self.tokenizer()
            .decode(tokens, true)
            .map_err(Error::Detokenize)
    }
    /// What preprocessing made of the last request's images (image tokens, crop grid, a hash of
    /// the pixel values), for reports; `None` where an architecture does not say.
    fn preprocessing(&self) -> Option<serde_json::Value> {
        None
    }
    /// What quantization at load made of the weights (`dtype = "q8_0"` / `"q4k"`); `None` for
    /// a dense model.
    fn quantization(&self) -> Option<&quant::QuantSummary> {
        None
    }
}

/// Refuses sizes read from a model's config that the code cannot work with (a 0 would divide by
/// zero or build empty tensors), naming the file and the key.
pub(crate) fn check_sizes(file: &str, sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(Error::invalid(
            file,
            format!("`{key}` is 0 (expected a positive number, as the Hugging Face repo has it)"),
        )),
        None => Ok(()),
    }
}

/// Reads a config or tokenizer file of a model folder, naming the file on failure.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => return Err(Error::Io { path, source }),
    };
    serde_json::from_str(&text).map_err(|source| Error::Config { path, source })
}

/// The safetensors files of a model folder: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: serde_json::Value = read_json(dir, "model.safetensors.index.json")?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::invalid(&index, "no `weight_map` object"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(Error::unsupported(format!(
                "{} names {}, which is missing",
                index.display(),
                missing.display()
            )));
        }
        return Ok(files);
    }
    Err(Error::unsupported(format!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )))
}

/// Memory-mapped safetensors, read one tensor at a time: each tensor is copied out of the
/// mapping into its own buffer and its pages are then released (`MADV_DONTNEED`), so loading
/// peaks at the model's size plus one tensor instead of twice the model's size (mapped pages
/// count as resident memory for as long as they are mapped).
struct ReleasingMmap(candle_core::safetensors::MmapedSafetensors);

impl ReleasingMmap {
    /// Drops the pages holding `bytes` from this process's resident memory; they are read from
    /// the file again should they be touched.
    fn release(bytes: &[u8]) {
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
            let start = bytes.as_ptr() as usize & !(page - 1);
            let end = bytes.as_ptr() as usize + bytes.len();
            if end > start {
                // SAFETY: the range lies inside a read-only file mapping this process owns; on
                // such a mapping MADV_DONTNEED only drops pages, which later reads fault back in.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = bytes;
    }
}

impl candle_nn::var_builder::SimpleBackend for ReleasingMmap {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let view = self.0.get(name)?;
        let t = candle_core::safetensors::Load::load(&view, dev)?.to_dtype(dtype)?;
        Self::release(view.data());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Maps the weights (see [`ReleasingMmap`]).
pub fn var_builder(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let files = weight_files(dir)?;
    // SAFETY: the files are mapped read-only; vlmtest never writes them, and a model folder
    // being rewritten while a run reads it is outside what any loader can guard against.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(
        |source| Error::Mmap {
            dir: dir.to_path_buf(),
            source,
        },
    )?;
    Ok(candle_nn::VarBuilder::from_backend(
        Box::new(ReleasingMmap(st)),
        dtype,
        device.clone(),
    ))
}

/// The folder's `tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    load_tokenizer_file(&dir.join("tokenizer.json"))
}

/// A `tokenizer.json` file, wherever it is.
pub(crate) fn load_tokenizer_file(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|source| Error::Tokenizer {
        path: path.to_path_buf(),
        source,
    })
}

/// Decodes an image file into RGB, as `do_convert_rgb` does.
pub fn decode_image(image: &crate::config::image::Image) -> Result<image::RgbImage> {
    let bytes = image.bytes()?;
    image::load_from_memory(&bytes)
        .map(|i| i.to_rgb8())
        .map_err(|source| Error::Image {
            shown: image.shown.clone(),
            source,
        })
}

/// Every image of the conversation, in order, decoded.
pub fn request_images(request: &Request) -> Result<Vec<image::RgbImage>> {
    request
        .messages
        .iter()
        .flat_map(|m| m.images.iter())
        .map(|i| decode_image(i))
        .collect()
}

/// Pillow-exact resize of an RGB image (see [`crate::resample`]); a copy when the size is
/// already `w` × `h`.
pub fn resize_rgb(
    img: &image::RgbImage,
    w: usize,
    h: usize,
    filter: crate::resample::Filter,
) -> image::RgbImage {
    if (w as u32, h as u32) == img.dimensions() {
        return img.clone();
    }
    let px = crate::resample::resize(
        img.as_raw(),
        img.width() as usize,
        img.height() as usize,
        3,
        w,
        h,
        filter,
    );
    image::RgbImage::from_raw(w as u32, h as u32, px).expect("resize returns w*h*3 bytes")
}

/// Appends `img` channel-first as the Hugging Face image processors make it: each value times
/// `rescale` (computed in f64, stored as f32), then `(v - mean) / std` per channel.
pub(crate) fn push_chw(
    img: &image::RgbImage,
    rescale: Option<f64>,
    normalize: Option<(&[f32], &[f32])>,
    out: &mut Vec<f32>,
) {
    out.reserve(3 * img.width() as usize * img.height() as usize);
    for ch in 0..3 {
        for p in img.pixels() {
            let mut v = p.0[ch] as f32;
            if let Some(r) = rescale {
                v = (p.0[ch] as f64 * r) as f32;
            }
            if let Some((mean, std)) = normalize {
                v = (v - mean[ch]) / std[ch];
            }
            out.push(v);
        }
    }
}

/// Puts the image features into the text: the embedding at each `image_token` position is
/// replaced by the next row of `features`, in order, as transformers' models merge them.
/// `embeds` is `[n, hidden]`, `features` `[m, hidden]`; the result is `[n, hidden]`.
pub(crate) fn splice_images(
    embeds: &Tensor,
    ids: &[u32],
    image_token: u32,
    features: Option<Tensor>,
) -> Result<Tensor> {
    let positions: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == image_token)
        .map(|(i, _)| i)
        .collect();
    let Some(features) = features else {
        if positions.is_empty() {
            return Ok(embeds.clone());
        }
        return Err(Error::request(format!(
            "the prompt has {} <image> tokens but no image",
            positions.len()
        )));
    };
    let m = features.dim(0)?;
    if m != positions.len() {
        return Err(Error::request(format!(
            "the prompt has {} <image> tokens for {m} image features",
            positions.len()
        )));
    }
    // Rows 0..n of the table are the text embeddings, n.. the image features; each position
    // takes its row.
    let n = ids.len();
    let table = features
        .to_dtype(embeds.dtype())
        .and_then(|f| Tensor::cat(&[embeds, &f], 0))?;
    let mut index: Vec<u32> = (0..n as u32).collect();
    for (k, &p) in positions.iter().enumerate() {
        index[p] = (n + k) as u32;
    }
    Ok(Tensor::new(index.as_slice(), embeds.device())
        .and_then(|index| table.index_select(&index, 0))?)
}

/// The device a spec asks for, with a clear error when this build cannot provide it.
pub fn device(kind: DeviceKind) -> Result<Device> {
    let unavailable = |hint: &'static str| move |source| Error::Device { kind, source, hint };
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).map_err(unavailable(
            "build vlmtest with `--features cuda` on a machine with CUDA",
        )),
        DeviceKind::Metal => Device::new_metal(0).map_err(unavailable(
            "build vlmtest with `--features metal` on macOS",
        )),
        DeviceKind::Auto => Ok(Device::cuda_if_available(0)
            .ok()
            .filter(|d| !d.is_cpu())
            .or_else(|| Device::new_metal(0).ok())
            .unwrap_or(Device::Cpu)),
    }
}

pub fn precision(kind: crate::kinds::DType) -> quant::Precision {
    use crate::kinds::DType as K;
    match kind {
        K::F32 => DType::F32.into(),
        K::F16 => DType::F16.into(),
        K::Bf16 => DType::BF16.into(),
        K::Q8_0 => quant::Precision::quantized(quant::Quant::Q8_0),
        K::Q4k => quant::Precision::quantized(quant::Quant::Q4K),
    }
}

/// A loaded in-process model.
pub struct Candle {
    model: Mutex<Box<dyn Vlm>>,
}

impl Candle {
    /// Finds the model's files (local folder or Hugging Face cache) and loads the architecture.
    pub fn load(name: &str, spec: &CandleSpec) -> Result<Self, LoadError> {
        let dtype = precision(spec.dtype);
        if let (Arch::Paligemma, Some(q)) = (spec.arch, dtype.quant) {
            return Err(LoadError::Invalid {
                model: name.to_string(),
                what: quant::unsupported(
                    "arch paligemma (its Gemma decoder is candle-transformers')",
                    q,
                ),
            });
        }
        let dir = match &spec.source {
            ModelSource::Path(p) => {
                if !p.is_dir() {
                    return Err(LoadError::Invalid {
                        model: name.to_string(),
                        what: format!(
                            "path {} is not a folder (expected a folder laid out like the Hugging Face repo)",
                            p.display()
                        ),
                    });
                }
                p.clone()
            }
            ModelSource::Hub { repo, revision } => {
                hub::cached_snapshot(repo, revision).map_err(|e| e.into_load_error(name, ""))?
            }
        };
        let device = device(spec.device).map_err(|e| LoadError::Device(Arc::new(e)))?;
        let checkpoint = |source: Error| LoadError::Checkpoint {
            model: name.to_string(),
            source: Arc::new(source),
        };
        let model: Box<dyn Vlm> = match spec.arch {
            Arch::Smolvlm => {
                Box::new(smolvlm::SmolVlm::load(&dir, dtype, &device).map_err(checkpoint)?)
            }
            Arch::LlavaNext => {
                Box::new(llava_next::LlavaNext::load(&dir, dtype, &device).map_err(checkpoint)?)
            }
            Arch::Moondream2 => {
                let tokenizer = tokenizer_file(name, spec)?;
                moondream2025::load(&dir, tokenizer.as_deref(), dtype, &device)
                    .map_err(checkpoint)?
            }
            Arch::Paligemma => Box::new(
                paligemma::PaliGemma::load(&dir, dtype.dtype, &device).map_err(checkpoint)?,
            ),
            Arch::Phi3V => Box::new(phi3_v::Phi3V::load(&dir, dtype, &device).map_err(checkpoint)?),
        };
        Ok(Self {
            model: Mutex::new(model),
        })
    }
}

/// The `tokenizer.json` a spec names instead of the repo's own (`tokenizer` / `tokenizer_repo`).
fn tokenizer_file(name: &str, spec: &CandleSpec) -> Result<Option<PathBuf>, LoadError> {
    match &spec.tokenizer {
        None => Ok(None),
        Some(TokenizerSource::Path(p)) => {
            let file = if p.is_dir() {
                p.join("tokenizer.json")
            } else {
                p.clone()
            };
            if !file.is_file() {
                return Err(LoadError::Invalid {
                    model: name.to_string(),
                    what: format!(
                        "tokenizer {} is not there (expected a tokenizer.json or a folder holding one)",
                        file.display()
                    ),
                });
            }
            Ok(Some(file))
        }
        Some(TokenizerSource::Hub { repo, revision }) => hub::cached_tokenizer(repo, revision)
            .map(Some)
            .map_err(|e| e.into_load_error(name, "the tokenizer ")),
    }
}

/// One answer's tokens and timings.
pub struct Answer {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    /// The end token that stopped the answer (not in `tokens`); `None` at `max_new_tokens`.
    pub stop: Option<u32>,
    pub time_to_first_token: Duration,
    pub total: Duration,
}

/// Greedy at temperature 0, else sampling with the temperature and seed; stops at EOS (not
/// included) or after `max_new_tokens`.
pub fn run(model: &mut dyn Vlm, request: &Request) -> Result<Answer> {
    let start = Instant::now();
    let params = &request.params;
    let sampling = if params.temperature <= 0.0 {
        Sampling::ArgMax
    } else {
        Sampling::All {
            temperature: params.temperature,
        }
    };
    let mut sampler = LogitsProcessor::from_sampling(params.seed.unwrap_or(299792458), sampling);
    let prefill = model.prefill(request)?;
    let mut logits = prefill.logits;
    let mut tokens = Vec::new();
    let mut stop = None;
    let mut first = None;
    let eos = model.eos().to_vec();
    while tokens.len() < params.max_new_tokens as usize {
        let next = sampler
            .sample(&logits)
            .map_err(Error::tensor("sampling failed"))?;
        first.get_or_insert_with(|| start.elapsed());
        if eos.contains(&next) {
            stop = Some(next);
            break;
        }
        tokens.push(next);
        if tokens.len() == params.max_new_tokens as usize {
            break;
        }
        logits = model.step(next).map_err(Error::tensor("decoding failed"))?;
    }
    Ok(Answer {
        prompt_tokens: prefill.prompt_tokens,
        tokens,
        stop,
        time_to_first_token: first.unwrap_or_else(|| start.elapsed()),
        total: start.elapsed(),
    })
}

impl Backend for Candle {
    fn generate(&self, request: &Request) -> Result<Generation, BackendError> {
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let answer = run(model.as_mut(), request).map_err(BackendError::model)?;
        let text = model
            .answer_text(&answer.tokens, answer.stop)
            .map_err(BackendError::model)?;
        Ok(Generation {
            text: text.trim().to_string(),
            latency: answer.total,
            prompt_tokens: Some(answer.prompt_tokens as u64),
            completion_tokens: Some(answer.tokens.len() as u64),
            time_to_first_token: Some(answer.time_to_first_token),
            preprocessing: model.preprocessing(),
            ..Generation::default()
        })
    }
}

//! The dimensions and token ids of the 2025 Moondream2, read as the reference reads them.
//!
//! Reference: vikhyat/moondream `moondream/torch/config.py` at commit 44146f1 (the code of the Hub
//! revision 2025-06-21). `MoondreamConfig.from_dict` builds four frozen dataclasses (`text`,
//! `vision`, `region`, `tokenizer`) from the sections of a dict, each section's fields keeping
//! their defaults unless named; the defaults are the real model's dimensions.
//!
//! The real repo's `config.json` has `"config": {}` (and its remote `HfConfig` even resets it to
//! `{}` on load), so the real model always runs with the defaults; a tiny test checkpoint carries
//! its own dimensions there. This port reads `config.json`'s `"config"` object the same way:
//! defaults, overridden field by field.
//!
//! Quirks of the reference, and what this port does with them:
//! - A field the dataclass does not have is a `TypeError` in Python: an error here too (a typo
//!   must not silently keep a default). Sections other than the four are ignored, as `from_dict`
//!   ignores them.
//! - `tokenizer.templates`, when given, replaces the whole default dict (a dataclass field is
//!   replaced, not merged); the same here.
//! - The rotary code asserts a rotary width of 32 = head_dim / 2, so `text.dim / text.n_heads`
//!   must be 64; the decoding loops build masks of 2048 positions whatever `max_context` says, so
//!   it must be 2048; the cropper always cuts 378-px crops of 14-px patches, whatever
//!   `crop_size`/`enc_patch_size` say. Configs that break these are refused here with the reason
//!   (the reference would crash or compute something else).
//! - `vision.enc_n_layers` doubles as the side of the patch grid in the reference (it reshapes
//!   local features to `enc_n_layers × enc_n_layers` and pools to that size). The real model
//!   has 27 layers and a 27 × 27 grid, so both readings agree; this port uses 378 / 14 = 27 for the
//!   grid and `enc_n_layers` for the layers only.
//! - `group_size` (int4 `QuantizedLinear` checkpoints) is not supported: refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The side of every crop, in pixels (the cropper's own default).
pub(crate) const CROP: usize = 378;
/// The side of a patch, in pixels.
pub(crate) const PATCH: usize = 14;
/// Patches per crop side: 27.
pub(crate) const GRID: usize = CROP / PATCH;
/// The rotary width of each text attention head (`rope.py`'s fixed `rot_dim`).
pub(crate) const ROT_DIM: usize = 32;
/// The text head size the rotary code allows.
pub(crate) const HEAD_DIM: usize = 2 * ROT_DIM;
/// The context the reference's masks are built for.
pub(crate) const MAX_CONTEXT: usize = 2048;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    pub dim: usize,
    pub ff_dim: usize,
    pub n_layers: usize,
    pub vocab_size: usize,
    pub max_context: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub prefix_attn: usize,
    pub group_size: Option<usize>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            dim: 2048,
            ff_dim: 8192,
            n_layers: 24,
            vocab_size: 51200,
            max_context: 2048,
            n_heads: 32,
            n_kv_heads: 32,
            prefix_attn: 730,
            group_size: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisionConfig {
    pub enc_dim: usize,
    pub enc_patch_size: usize,
    pub enc_n_layers: usize,
    pub enc_ff_dim: usize,
    pub enc_n_heads: usize,
    pub proj_out_dim: usize,
    pub crop_size: usize,
    pub in_channels: usize,
    pub max_crops: usize,
    pub overlap_margin: usize,
    pub proj_inner_dim: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            enc_dim: 1152,
            enc_patch_size: 14,
            enc_n_layers: 27,
            enc_ff_dim: 4304,
            enc_n_heads: 16,
            proj_out_dim: 2048,
            crop_size: 378,
            in_channels: 3,
            max_crops: 12,
            overlap_margin: 4,
            proj_inner_dim: 8192,
        }
    }
}

/// The region head's dimensions: read (so that a config naming them is accepted) but unused:
/// detect/point/gaze are not ported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionConfig {
    pub dim: Option<usize>,
    pub coord_feat_dim: Option<usize>,
    pub coord_out_dim: Option<usize>,
    pub size_feat_dim: Option<usize>,
    pub size_out_dim: Option<usize>,
    pub inner_dim: Option<usize>,
    pub group_size: Option<usize>,
}

/// A prompt template with the question in between.
#[derive(Debug, Clone, Deserialize)]
pub struct PrefixSuffix {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

/// `tokenizer.templates`: the token ids of each task's prompt. `None` where the model does not
/// support the task (the reference's `templates["caption"] is None`).
#[derive(Debug, Clone, Deserialize)]
pub struct Templates {
    #[serde(default)]
    pub caption: Option<BTreeMap<String, Vec<u32>>>,
    #[serde(default)]
    pub query: Option<PrefixSuffix>,
    /// detect, point: not ported.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Default for Templates {
    fn default() -> Self {
        let caption = [
            ("short", vec![1, 32708, 2, 12492, 3]),
            ("normal", vec![1, 32708, 2, 6382, 3]),
            ("long", vec![1, 32708, 2, 4059, 3]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            caption: Some(caption),
            query: Some(PrefixSuffix {
                prefix: vec![1, 15381, 2],
                suffix: vec![3],
            }),
            other: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    pub bos_id: u32,
    pub eos_id: u32,
    pub answer_id: u32,
    pub thinking_id: u32,
    pub coord_id: u32,
    pub size_id: u32,
    pub start_ground_points_id: u32,
    pub end_ground_id: u32,
    pub templates: Templates,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            bos_id: 0,
            eos_id: 0,
            answer_id: 3,
            thinking_id: 4,
            coord_id: 5,
            size_id: 6,
            start_ground_points_id: 7,
            end_ground_id: 9,
            templates: Templates::default(),
        }
    }
}

/// `MoondreamConfig`: the four sections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub region: RegionConfig,
    pub tokenizer: TokenizerConfig,
}

/// config.json: only `"config"` matters; the other keys (`architectures`, `auto_map`,
/// `torch_dtype`, ...) are the Hub wrapper's.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    config: Option<Config>,
}

/// The line of `"key"` in `text` (the first after `"section"` when that is found), for errors.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let from = text.find(&format!("\"{section}\"")).unwrap_or(0);
    let at = text[from..].find(&format!("\"{key}\""))? + from;
    Some(text[..at].matches('\n').count() + 1)
}

impl Config {
    /// Reads `dir/config.json`: the defaults, overridden by its `"config"` object; then checks
    /// what the port (and the reference) can run.
    pub fn load(dir: &Path) -> crate::backend::candle::Result<Config> {
        use crate::backend::candle::Error;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // Not `Error::Config`: the message says what Moondream's file holds.
        let file: File = serde_json::from_str(&text).map_err(|e| {
            Error::unsupported(format!(
                "{}:{}: {e} (expected Moondream's config.json: a \"config\" object with sections text, vision, region, tokenizer of the reference's dataclass fields)",
                path.display(),
                e.line()
            ))
        })?;
        let cfg = file.config.unwrap_or_default();
        cfg.check().map_err(|(section, key, why)| {
            let at = line_of(&text, section, key)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            Error::unsupported(format!(
                "{}{at}: config.{section}.{key}: {why}",
                path.display()
            ))
        })?;
        Ok(cfg)
    }

    /// What the port can run: `Err((section, field, why))`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
        let t = &self.text;
        let v = &self.vision;
        let positive = [
            ("text", "dim", t.dim),
            ("text", "ff_dim", t.ff_dim),
            ("text", "n_layers", t.n_layers),
            ("text", "vocab_size", t.vocab_size),
            ("text", "n_heads", t.n_heads),
            ("text", "n_kv_heads", t.n_kv_heads),
            ("vision", "enc_dim", v.enc_dim),
            ("vision", "enc_n_layers", v.enc_n_layers),
            ("vision", "enc_ff_dim", v.enc_ff_dim),
            ("vision", "enc_n_heads", v.enc_n_heads),
            ("vision", "proj_inner_dim", v.proj_inner_dim),
            ("vision", "proj_out_dim", v.proj_out_dim),
            ("vision", "max_crops", v.max_crops),
        ];
        for (s, k, n) in positive {
            if n == 0 {
                return Err((s, k, "is 0 (expected a positive number)".into()));
            }
        }
        if !t.dim.is_multiple_of(t.n_heads) || t.dim / t.n_heads != HEAD_DIM {
            return Err((
                "text",
                "n_heads",
                format!(
                    "dim {} / n_heads {} is not a head size of {HEAD_DIM} (the reference's rotary embedding works on {ROT_DIM} of {HEAD_DIM} dims per head and asserts that size)",
                    t.dim, t.n_heads
                ),
            ));
        }
        if !t.n_heads.is_multiple_of(t.n_kv_heads) {
            return Err((
                "text",
                "n_kv_heads",
                format!(
                    "n_heads {} is not a multiple of n_kv_heads {}",
                    t.n_heads, t.n_kv_heads
                ),
            ));
        }
        if t.max_context != MAX_CONTEXT {
            return Err((
                "text",
                "max_context",
                format!(
                    "is {} (expected {MAX_CONTEXT}: the reference's decoding masks are {MAX_CONTEXT} positions long whatever the config says)",
                    t.max_context
                ),
            ));
        }
        if t.group_size.is_some() {
            return Err((
                "text",
                "group_size",
                "is set: int4 quantized Moondream checkpoints are not supported (use the bf16 one)"
                    .into(),
            ));
        }
        if !v.enc_dim.is_multiple_of(v.enc_n_heads) {
            return Err((
                "vision",
                "enc_n_heads",
                format!(
                    "enc_dim {} is not a multiple of enc_n_heads {}",
                    v.enc_dim, v.enc_n_heads
                ),
            ));
        }
        if v.crop_size != CROP || v.enc_patch_size != PATCH {
            return Err((
                "vision",
                if v.crop_size != CROP {
                    "crop_size"
                } else {
                    "enc_patch_size"
                },
                format!(
                    "crop_size {} / enc_patch_size {} (expected {CROP} / {PATCH}: the reference's cropper always cuts {CROP}-px crops of {PATCH}-px patches)",
                    v.crop_size, v.enc_patch_size
                ),
            ));
        }
        if v.in_channels != 3 {
            return Err((
                "vision",
                "in_channels",
                format!("is {} (expected 3: RGB)", v.in_channels),
            ));
        }
        if 2 * v.overlap_margin >= GRID {
            return Err((
                "vision",
                "overlap_margin",
                format!(
                    "is {} patches (expected less than {}: the margins on both sides must leave part of the {GRID}-patch crop)",
                    v.overlap_margin,
                    GRID.div_ceil(2)
                ),
            ));
        }
        if v.proj_out_dim != t.dim {
            return Err((
                "vision",
                "proj_out_dim",
                format!(
                    "is {} (expected text.dim {}: the image embeddings go into the text model)",
                    v.proj_out_dim, t.dim
                ),
            ));
        }
        let tk = &self.tokenizer;
        let vocab = t.vocab_size as u32;
        let ids = [
            ("bos_id", tk.bos_id),
            ("eos_id", tk.eos_id),
            ("answer_id", tk.answer_id),
        ];
        for (k, id) in ids {
            if id >= vocab {
                return Err((
                    "tokenizer",
                    k,
                    format!("{id} is outside the vocabulary (text.vocab_size {vocab})"),
                ));
            }
        }
        let templates = &tk.templates;
        let mut all: Vec<&u32> = Vec::new();
        if let Some(q) = &templates.query {
            all.extend(q.prefix.iter().chain(&q.suffix));
        }
        if let Some(c) = &templates.caption {
            all.extend(c.values().flatten());
        }
        if let Some(id) = all.into_iter().find(|id| **id >= vocab) {
            return Err((
                "tokenizer",
                "templates",
                format!("token {id} is outside the vocabulary (text.vocab_size {vocab})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<Config, String> {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("config.json"), json).unwrap();
        Config::load(t.path()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_real_nearly_empty_config_gives_the_real_dimensions() {
        let c = load(r#"{"architectures": ["HfMoondream"], "config": {}, "model_type": "moondream1", "torch_dtype": "bfloat16"}"#).unwrap();
        assert_eq!(
            (c.text.dim, c.text.n_layers, c.text.n_heads),
            (2048, 24, 32)
        );
        assert_eq!((c.vision.enc_dim, c.vision.enc_n_layers), (1152, 27));
        assert_eq!(
            c.tokenizer.templates.query.unwrap().prefix,
            vec![1, 15381, 2]
        );
        // No "config" at all: the same.
        assert_eq!(load("{}").unwrap().text.vocab_size, 51200);
    }

    #[test]
    fn fields_override_one_by_one() {
        let c = load(r#"{"config": {"text": {"dim": 128, "n_heads": 2, "n_kv_heads": 2}, "vision": {"proj_out_dim": 128}}}"#).unwrap();
        assert_eq!(
            (c.text.dim, c.text.ff_dim, c.text.n_layers),
            (128, 8192, 24)
        );
        assert_eq!(c.vision.proj_out_dim, 128);
    }

    #[test]
    fn bad_configs_name_the_file_line_and_field() {
        let e = load("{\"config\": {\n \"text\": {\n  \"n_heads\": 0}}}").unwrap_err();
        assert!(
            e.contains("config.json:3: config.text.n_heads: is 0"),
            "{e}"
        );
        let e = load(r#"{"config": {"text": {"n_heads": 16}}}"#).unwrap_err();
        assert!(e.contains("not a head size of 64"), "{e}");
        let e = load(r#"{"config": {"text": {"dimm": 16}}}"#).unwrap_err();
        assert!(e.contains("config.json:1: unknown field `dimm`"), "{e}");
        let e = load(r#"{"config": {"text": {"max_context": 4096}}}"#).unwrap_err();
        assert!(e.contains("max_context: is 4096"), "{e}");
        let e = load(r#"{"config": {"vision": {"proj_out_dim": 64}}}"#).unwrap_err();
        assert!(e.contains("expected text.dim 2048"), "{e}");
        let e = load("{\"config\": [1]}").unwrap_err();
        assert!(e.contains("config.json:1:"), "{e}");
    }
}

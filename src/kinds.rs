//! The closed sets of names a user may write in models.toml, shared by `config` (which reads
//! them) and `backend` (which acts on them). This module depends on nothing else in the crate,
//! so neither side has to reach into the other.
//!
//! Each set is a serde enum: reading one from a string lists the valid choices in its error.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Reads a closed-set value from its name, with serde's message listing the valid choices
/// ("unknown variant `x`, expected one of `a`, `b`").
pub fn parse<'de, T: Deserialize<'de>>(name: &'de str) -> Result<T, serde::de::value::Error> {
    let de = serde::de::value::BorrowedStrDeserializer::<serde::de::value::Error>::new(name);
    T::deserialize(de)
}

/// An environment variable whose value is not one of its choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}` is not understood (expected one of: {})", .choices.join(", "))]
pub struct EnvError {
    pub var: &'static str,
    /// The value as set, trimmed.
    pub value: String,
    pub choices: &'static [&'static str],
}

impl EnvError {
    pub fn new(var: &'static str, value: &str, choices: &'static [&'static str]) -> EnvError {
        EnvError {
            var,
            value: value.trim().to_string(),
            choices,
        }
    }
}

/// Why a candle model cannot run in a build without the `candle` feature.
pub(crate) const NO_CANDLE: &str = "backend `candle` (in-process models) needs vlmtest built with the `candle` cargo feature, \
     which is on by default; this build left it out (--no-default-features): rebuild without that flag, \
     or serve the model over HTTP (backend = \"openai\" or \"llama-server\")";

/// The engines a model can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// In-process, on candle.
    Candle,
    /// Any OpenAI-compatible chat/completions server.
    Openai,
    /// llama.cpp's llama-server, started and stopped by vlmtest.
    LlamaServer,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Candle,
        BackendKind::Openai,
        BackendKind::LlamaServer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Candle => "candle",
            BackendKind::Openai => "openai",
            BackendKind::LlamaServer => "llama-server",
        }
    }

    /// Whether the model's weights live in this process (and count against
    /// `VLMTEST_MAX_RESIDENT`).
    pub fn in_process(self) -> bool {
        matches!(self, BackendKind::Candle)
    }
}

/// Declares [`Arch`] from one line per architecture: its variant, its models.toml name, whether
/// it can answer a question without an image (the default of a model's `text_only`), and its
/// doc line. `ALL`, `name` and `answers_text_only` follow from the table.
macro_rules! arches {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, text_only: $text:literal;)*) => {
        /// In-process architectures (`arch` of a candle model).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Arch {
            $($(#[doc = $doc])* #[serde(rename = $name)] $variant,)*
        }

        impl Arch {
            pub const ALL: &'static [Arch] = &[$(Arch::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Arch::$variant => $name,)*
                }
            }

            /// Whether the architecture can answer a question without an image: the default of
            /// a model's `text_only`.
            pub(crate) fn answers_text_only(self) -> bool {
                match self {
                    $(Arch::$variant => $text,)*
                }
            }
        }
    };
}

arches! {
    /// SmolVLM and SmolVLM2 (Idefics3 layout).
    Smolvlm = "smolvlm", text_only: true;
    /// Moondream2, in the layout its revision's files have. Its 2024 layout always encodes an
    /// image (the 2025 layout can do without: set `text_only = true`).
    Moondream2 = "moondream2", text_only: false;
    /// LLaVA-NeXT (LLaVA-1.6) in the llava-hf layout.
    LlavaNext = "llava-next", text_only: true;
    /// PaliGemma: no text-only prompt format.
    Paligemma = "paligemma", text_only: false;
    /// Phi-3 / Phi-3.5-Vision (Microsoft's remote-code layout).
    Phi3V = "phi3-v", text_only: true;
}

/// Weight and compute precision of an in-process model (`dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum DType {
    #[default]
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    /// Linear layers quantized at load to 8 bits (ggml's Q8_0: blocks of 32, one f16 scale
    /// each); activations f32.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Linear layers quantized at load to 4 bits (ggml's Q4_K: super-blocks of 256 with 6-bit
    /// scales and minimums); activations f32.
    #[serde(rename = "q4k")]
    Q4k,
}

impl DType {
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::Bf16, DType::Q8_0, DType::Q4k];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4k => "q4k",
        }
    }

    /// Whether the weights are quantized at load (the activations are then f32).
    pub fn quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4k)
    }
}

/// Where an in-process model runs (`device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Metal,
    /// CUDA, else Metal, else the CPU.
    Auto,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
            DeviceKind::Auto => "auto",
        }
    }
}

macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
display_by_name!(BackendKind, Arch, DType, DeviceKind);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for &a in Arch::ALL {
            assert_eq!(parse::<Arch>(a.name()), Ok(a));
        }
        for b in BackendKind::ALL {
            assert_eq!(parse::<BackendKind>(b.name()), Ok(b));
        }
        for d in DType::ALL {
            assert_eq!(parse::<DType>(d.name()), Ok(d));
        }
        for d in [
            DeviceKind::Cpu,
            DeviceKind::Cuda,
            DeviceKind::Metal,
            DeviceKind::Auto,
        ] {
            assert_eq!(parse::<DeviceKind>(d.name()), Ok(d));
        }
    }

    #[test]
    fn env_errors_list_the_choices() {
        assert_eq!(
            CacheMode::parse(" sometimes ").unwrap_err().to_string(),
            "VLMTEST_CACHE=`sometimes` is not understood (expected one of: off, read, write, readwrite, strict)"
        );
    }

    #[test]
    fn errors_list_the_choices() {
        let e = parse::<Arch>("smolvml").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown variant `smolvml`, expected one of `smolvlm`, `moondream2`, `llava-next`, `paligemma`, `phi3-v`"
        );
        assert_eq!(
            parse::<DType>("q4").unwrap_err().to_string(),
            "unknown variant `q4`, expected one of `f32`, `f16`, `bf16`, `q8_0`, `q4k`"
        );
    }
}

/// What insta's `INSTA_UPDATE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// `no` under CI, `unseen` elsewhere (vlmtest's default: new snapshots are accepted).
    Auto,
    Always,
    New,
    Unseen,
    No,
}

/// `VLMTEST_CACHE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Nothing is read or written.
    #[default]
    Off,
    /// Recorded answers are replayed; a miss asks the model.
    Read,
    /// Every answer is asked live and recorded.
    Write,
    /// Recorded answers are replayed; a miss asks the model and records the answer.
    ReadWrite,
    /// Recorded answers are replayed; a miss fails the trial (saying what changed) and nothing
    /// is ever asked live: no weights are loaded, no server started, no request sent.
    Strict,
}

impl CacheMode {
    /// Reads `VLMTEST_CACHE` (empty: `off`).
    pub fn parse(v: &str) -> Result<CacheMode, EnvError> {
        Ok(match v.trim() {
            "" | "off" => CacheMode::Off,
            "read" => CacheMode::Read,
            "write" => CacheMode::Write,
            "readwrite" => CacheMode::ReadWrite,
            "strict" => CacheMode::Strict,
            other => {
                return Err(EnvError::new(
                    "VLMTEST_CACHE",
                    other,
                    &["off", "read", "write", "readwrite", "strict"],
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Off => "off",
            CacheMode::Read => "read",
            CacheMode::Write => "write",
            CacheMode::ReadWrite => "readwrite",
            CacheMode::Strict => "strict",
        }
    }

    pub fn reads(self) -> bool {
        matches!(
            self,
            CacheMode::Read | CacheMode::ReadWrite | CacheMode::Strict
        )
    }

    pub fn writes(self) -> bool {
        matches!(self, CacheMode::Write | CacheMode::ReadWrite)
    }
}

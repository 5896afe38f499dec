//! A model's fingerprint: what identifies its answers without running it (the type; how it is
//! computed from a model's declaration is `backend::fingerprint`). A leaf module: the cache, the
//! baselines and the reports share it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A model's fingerprint. Two runs whose fingerprints are equal asked the same model the same
/// way (as far as vlmtest can tell without asking it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub backend: String,
    /// What is served: `hf:REPO@COMMIT` (the commit the revision resolved to in the cache, or
    /// `REV (not cached)`), `files:` + a hash of the files' names, sizes and SHA-256s, or
    /// `server:BASE_URL model=NAME`.
    pub weights: String,
    /// Everything else that changes answers: dtype, device, tokenizer, llama-server arguments and
    /// prompt cache, the system prompt.
    pub settings: BTreeMap<String, String>,
}

impl Fingerprint {
    /// A short stable digest (SHA-256 of the canonical JSON, 16 hex digits).
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        hex(&Sha256::digest(json.as_bytes()))[..16].to_string()
    }

    /// The settings that differ between two fingerprints, for messages ("weights", "dtype", ...).
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.backend != other.backend {
            out.push(format!("backend {} vs {}", self.backend, other.backend));
        }
        if self.weights != other.weights {
            out.push(format!("weights {} vs {}", self.weights, other.weights));
        }
        let keys: std::collections::BTreeSet<&String> =
            self.settings.keys().chain(other.settings.keys()).collect();
        for k in keys {
            let (a, b) = (self.settings.get(k), other.settings.get(k));
            if a != b {
                let show = |v: Option<&String>| v.map_or("(unset)".to_string(), |v| v.clone());
                out.push(format!("{k} {} vs {}", show(a), show(b)));
            }
        }
        out
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_what_changed() {
        let a = Fingerprint {
            backend: "candle".into(),
            weights: "hf:a/b@1".into(),
            settings: BTreeMap::from([("dtype".into(), "f32".into())]),
        };
        let mut b = a.clone();
        b.settings.insert("dtype".into(), "bf16".into());
        assert_eq!(a.differences(&b), ["dtype f32 vs bf16"]);
        assert_ne!(a.digest(), b.digest());
    }
}

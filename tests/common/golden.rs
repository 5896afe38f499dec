//! Reading `tests/fixtures/*/golden.json` (made by `tests/fixtures/make_fixtures.py`).

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use vlmtest::config::image::{Image, ImageCache};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies the files of `from` into `to` (created), leaving out those named in `skip`.
pub fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if !skip.iter().any(|s| e.file_name() == *s) {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn golden(arch: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(arch).join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn image(rel: &str) -> Arc<Image> {
    ImageCache::default().get(&fixtures(), rel).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Checks pixel values against the golden's summary: shape (without the batch), the first
/// values, and the sum of each image or tile.
pub fn check_pixels(case: &Value, px: &candle_core::Tensor, what: &str) {
    let shape: Vec<usize> = floats(&case["pixel_values"]["shape"])
        .iter()
        .map(|x| *x as usize)
        .collect();
    let dims = px.dims();
    assert_eq!(
        &dims[dims.len() - 3..],
        &shape[shape.len() - 3..],
        "{what}: pixel shape"
    );
    let flat: Vec<f32> = px.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        flat.len(),
        shape.iter().product::<usize>(),
        "{what}: pixel count"
    );
    for (a, b) in flat
        .iter()
        .zip(&floats(&case["pixel_values"]["first_values"]))
    {
        assert!((*a as f64 - b).abs() < 1e-6, "{what}: pixel {a} vs {b}");
    }
    let sums = floats(&case["pixel_values"]["per_image_sum"]);
    let per = flat.len() / sums.len();
    for (k, want) in sums.iter().enumerate() {
        let got: f64 = flat[k * per..(k + 1) * per].iter().map(|v| *v as f64).sum();
        assert!(
            (got - want).abs() < 1e-3,
            "{what} image {k}: sum {got} vs {want}"
        );
    }
}

/// The largest difference between the logits and the golden's `last_logits`, which must be
/// under 1e-3.
pub fn check_logits(case: &Value, logits: &candle_core::Tensor, what: &str) -> f64 {
    let got: Vec<f32> = logits.to_vec1().unwrap();
    let want = floats(&case["last_logits"]);
    assert_eq!(got.len(), want.len(), "{what}: vocabulary size");
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: largest logit difference {worst:.2e}");
    assert!(worst < 1e-3, "{what}: logits differ by up to {worst}");
    worst
}

/// `n` greedy tokens from the first logits, feeding each back with `step`.
pub fn greedy(
    first: candle_core::Tensor,
    n: usize,
    mut step: impl FnMut(u32) -> candle_core::Tensor,
) -> Vec<u32> {
    let mut logits = first;
    let mut out = Vec::new();
    for _ in 0..n {
        let t = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(t);
        if out.len() < n {
            logits = step(t);
        }
    }
    out
}

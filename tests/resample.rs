//! src/resample.rs reproduces Pillow's `Image.resize` byte for byte (goldens made by
//! tests/fixtures/make_resample_goldens.py with Pillow itself).

use std::path::Path;

use vlmtest::resample::{Filter, resize};

fn rgb(path: &Path) -> (Vec<u8>, usize, usize) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

#[test]
fn matches_pillow_byte_for_byte() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("resample/cases.json")).unwrap())
            .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 50);
    let mut failures = Vec::new();
    for c in cases {
        let (px, w, h) = rgb(&dir.join(c["input"].as_str().unwrap()));
        let (want, ww, wh) = rgb(&dir.join(c["expected"].as_str().unwrap()));
        let filter = match c["filter"].as_str().unwrap() {
            "lanczos" => Filter::Lanczos,
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            "box" => Filter::Box,
            other => panic!("unknown filter {other}"),
        };
        let got = resize(&px, w, h, 3, ww, wh, filter);
        if got != want {
            let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            failures.push(format!(
                "{}: {diff} bytes differ (max {max})",
                c["expected"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

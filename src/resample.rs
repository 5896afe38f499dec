//! Image resizing that reproduces Pillow's `Image.resize` byte for byte on 8-bit RGB images.
//!
//! The Hugging Face image processors of the models vlmtest will run in-process (SmolVLM: Lanczos;
//! LLaVA-NeXT and PaliGemma: bicubic) resize with Pillow before normalising, so an in-process
//! backend that is to reproduce transformers token for token must resize exactly as Pillow does:
//! separable convolution, horizontal pass then vertical, with the filter stretched by the scale
//! when shrinking, weights normalised per output pixel, then turned into 22-bit fixed point, and
//! each pass rounded and clipped to 8 bits. This module is an independent implementation of that
//! behaviour (Pillow's `libImaging/Resample.c`), checked against Pillow's own output in
//! `tests/fixtures/resample/`.

/// Pillow's resampling filters (the numbers are Pillow's `Image.Resampling` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BOX` (4).
    Box,
    /// `Image.BILINEAR` (2).
    Bilinear,
    /// `Image.BICUBIC` (3), a = -0.5.
    Bicubic,
    /// `Image.LANCZOS` (1), a = 3.
    Lanczos,
}

impl Filter {
    /// The filter for a `resample` value of a Hugging Face preprocessor config.
    pub fn from_pil(code: u32) -> Option<Filter> {
        match code {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: the first input index, and the fixed-point weights from there.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..count {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            row[x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an 8-bit image of `channels` interleaved channels (`width` × `height`, row-major) to
/// `new_width` × `new_height`, exactly as Pillow's `Image.resize(size, resample)` does.
pub fn resize(
    pixels: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height * channels, "pixel buffer size");
    if new_width == 0 || new_height == 0 {
        return Vec::new();
    }
    if (new_width, new_height) == (width, height) {
        return pixels.to_vec();
    }
    let init = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass, when the width changes.
    let (tmp, tw) = if new_width != width {
        let c = coefficients(width, new_width, filter);
        let mut out = vec![0u8; new_width * height * channels];
        for y in 0..height {
            let src = &pixels[y * width * channels..(y + 1) * width * channels];
            for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
                for ch in 0..channels {
                    let mut ss = init;
                    for (x, w) in k.iter().enumerate() {
                        ss = ss.wrapping_add(i32::from(src[(xmin + x) * channels + ch]) * w);
                    }
                    out[(y * new_width + xx) * channels + ch] = clip8(ss);
                }
            }
        }
        (out, new_width)
    } else {
        (pixels.to_vec(), width)
    };
    if new_height == height {
        return tmp;
    }
    // Vertical pass.
    let c = coefficients(height, new_height, filter);
    let mut out = vec![0u8; tw * new_height * channels];
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
        for x in 0..tw * channels {
            let mut ss = init;
            for (y, w) in k.iter().enumerate() {
                ss = ss.wrapping_add(i32::from(tmp[(ymin + y) * tw * channels + x]) * w);
            }
            out[yy * tw * channels + x] = clip8(ss);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant_images() {
        let px: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        assert_eq!(resize(&px, 4, 3, 3, 4, 3, Filter::Lanczos), px);
        // A constant image stays constant under every filter, up or down.
        let flat = vec![77u8; 10 * 7 * 3];
        for f in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (w, h) in [(3, 2), (25, 13), (10, 20)] {
                let out = resize(&flat, 10, 7, 3, w, h, f);
                assert!(out.iter().all(|&v| v == 77), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn filters_from_preprocessor_configs() {
        assert_eq!(Filter::from_pil(1), Some(Filter::Lanczos));
        assert_eq!(Filter::from_pil(3), Some(Filter::Bicubic));
        assert_eq!(Filter::from_pil(0), None);
    }
}

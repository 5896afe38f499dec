//! The 2025 Moondream2's image preprocessing: overlapping crops, bf16 normalisation, and the
//! geometry that stitches the crops' features back together and pools them to 27 × 27.
//!
//! Reference: vikhyat/moondream `moondream/torch/image_crops.py` (`select_tiling`,
//! `overlap_crop_image`, `reconstruct_from_crops`) and `vision.py` (`prepare_crops`,
//! `vision_projection`) at commit 44146f1, the code of the Hub revision 2025-06-21.
//!
//! Quirks of the reference, reproduced because they change the pixels the encoder sees:
//! - The tiling is chosen for the image **minus** the two margins (112 px), against the usable
//!   window of a crop (266 px), with at most `max_crops` tiles; see [`select_tiling`].
//! - Both the local source image (resized to `tiles × 266 + 112` per side) and the global crop
//!   (378 × 378) are resized with **Pillow's LANCZOS**, squashing the aspect ratio (no padding).
//!   This is the reference's Pillow branch; with pyvips installed it resizes with libvips instead
//!   (other pixels), which a plain `pip install` does not get. [`crate::resample`] is Pillow's
//!   resize byte for byte.
//! - Local crops are cut at multiples of 266 px and always fit (the zero-padding branch of the
//!   reference cannot trigger for the sizes it resizes to).
//! - Pixels are normalised **in bfloat16**: u8 → bf16, ÷ 255, − 0.5, ÷ 0.5, each step rounded to
//!   bf16, even when the model runs in f32 (the reference hard-codes bfloat16 there). Plain f32
//!   `(u / 255 − 0.5) / 0.5` differs by up to ~0.004, enough to change greedy answers; see
//!   [`pixel_lut`].
//! - Stitching keeps, per tile, its patch rows and columns minus the overlap margin on the sides
//!   that touch another tile; the stitched grid is then average-pooled to 27 × 27 with PyTorch's
//!   `adaptive_avg_pool2d` bins (start ⌊i·n/27⌋, end ⌈(i+1)·n/27⌉), see [`pool_bins`].

use image::RgbImage;

use super::config::{CROP, GRID, PATCH};
use crate::backend::candle::resize_rgb;
use crate::resample::Filter;

/// Crops ready for the vision encoder, and how they tile the image.
#[derive(Debug, Clone)]
pub struct Crops {
    /// (rows, columns) of local crops.
    pub tiling: (usize, usize),
    /// (height, width) the image was resized to before the local crops were cut.
    pub local_size: (usize, usize),
    /// The global crop (the whole image at 378 × 378), then the local crops row-major; each
    /// 378 × 378.
    pub images: Vec<RgbImage>,
}

impl Crops {
    /// The normalised pixels, `[crops, 3, 378, 378]` channel-first, as f32 values of the bf16
    /// normalisation.
    pub fn pixels(&self) -> Vec<f32> {
        let lut = pixel_lut();
        let mut out = Vec::with_capacity(self.images.len() * 3 * CROP * CROP);
        for img in &self.images {
            for ch in 0..3 {
                out.extend(img.pixels().map(|p| lut[p.0[ch] as usize]));
            }
        }
        out
    }
}

/// Rounds an f32 to the nearest bfloat16 (ties to even), returned as f32: what PyTorch stores
/// after each operation on a bf16 tensor (computed in f32, then rounded).
pub(crate) fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return x;
    }
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// The value the encoder sees for each u8, normalised as the reference does in bfloat16:
/// `((bf16(u) / 255) − 0.5) / 0.5` with every step rounded to bf16.
pub fn pixel_lut() -> [f32; 256] {
    let mut lut = [0f32; 256];
    for (u, v) in lut.iter_mut().enumerate() {
        let x = round_bf16(u as f32);
        let x = round_bf16(x / 255.0);
        let x = round_bf16(x - 0.5);
        *v = round_bf16(x / 0.5);
    }
    lut
}

/// `select_tiling`: how many crops (rows, columns) cover an image of `height` × `width` pixels
/// (already without margins) with windows of `window` pixels, at most `max_crops` of them.
pub(crate) fn select_tiling(
    height: usize,
    width: usize,
    window: usize,
    max_crops: usize,
) -> (usize, usize) {
    if height <= window || width <= window {
        return (1, 1);
    }
    let min_h = height.div_ceil(window);
    let min_w = width.div_ceil(window);
    if min_h * min_w > max_crops {
        let ratio = (max_crops as f64 / (min_h * min_w) as f64).sqrt();
        return (
            ((min_h as f64 * ratio).floor() as usize).max(1),
            ((min_w as f64 * ratio).floor() as usize).max(1),
        );
    }
    // Python: math.floor(math.sqrt(max_crops * height / width)), true division in f64.
    let mut h = ((max_crops as f64 * height as f64 / width as f64).sqrt()).floor() as usize;
    let mut w = ((max_crops as f64 * width as f64 / height as f64).sqrt()).floor() as usize;
    h = h.max(min_h);
    w = w.max(min_w);
    if h * w > max_crops {
        if w > h {
            w = max_crops / h;
        } else {
            h = max_crops / w;
        }
    }
    (h.max(1), w.max(1))
}

/// `overlap_crop_image` (Pillow branch): the global crop and the overlapping local crops of `img`.
pub(crate) fn overlap_crops(img: &RgbImage, max_crops: usize, overlap_margin: usize) -> Crops {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let margin = PATCH * overlap_margin;
    let window = (GRID - 2 * overlap_margin) * PATCH;
    let tiling = select_tiling(
        h.saturating_sub(2 * margin),
        w.saturating_sub(2 * margin),
        window,
        max_crops,
    );
    let local_size = (
        tiling.0 * window + 2 * margin,
        tiling.1 * window + 2 * margin,
    );
    let resized = resize_rgb(img, local_size.1, local_size.0, Filter::Lanczos);
    let mut images = Vec::with_capacity(1 + tiling.0 * tiling.1);
    images.push(resize_rgb(img, CROP, CROP, Filter::Lanczos));
    for i in 0..tiling.0 {
        for j in 0..tiling.1 {
            let (y0, x0) = (i * window, j * window);
            let crop =
                image::imageops::crop_imm(&resized, x0 as u32, y0 as u32, CROP as u32, CROP as u32)
                    .to_image();
            // Always 378 × 378: the resized image is `tiles × window + 2 margins` per side.
            images.push(crop);
        }
    }
    Crops {
        tiling,
        local_size,
        images,
    }
}

/// One tile's part of the stitched grid: the tile's patch rows `rows` and columns `cols` go to
/// the grid at (`at_row`, `at_col`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
    pub at_row: usize,
    pub at_col: usize,
}

/// `reconstruct_from_crops` in patch units: for each local crop (row-major), the part it keeps;
/// and the stitched grid's (height, width) = `19 × tiles + 8` per side for the defaults.
pub(crate) fn stitch_layout(
    tiling: (usize, usize),
    overlap_margin: usize,
) -> (Vec<Piece>, (usize, usize)) {
    let (th, tw) = tiling;
    let m = overlap_margin;
    let step = GRID - 2 * m;
    let mut pieces = Vec::with_capacity(th * tw);
    for ty in 0..th {
        for tx in 0..tw {
            let r0 = if ty == 0 { 0 } else { m };
            let r1 = if ty + 1 == th { GRID } else { GRID - m };
            let c0 = if tx == 0 { 0 } else { m };
            let c1 = if tx + 1 == tw { GRID } else { GRID - m };
            pieces.push(Piece {
                rows: r0..r1,
                cols: c0..c1,
                at_row: ty * step + r0,
                at_col: tx * step + c0,
            });
        }
    }
    (pieces, (step * th + 2 * m, step * tw + 2 * m))
}

/// PyTorch's `adaptive_avg_pool` bins for `n` inputs pooled to `out` outputs:
/// `[⌊i·n/out⌋, ⌈(i+1)·n/out⌉)`.
pub(crate) fn pool_bins(n: usize, out: usize) -> Vec<std::ops::Range<usize>> {
    (0..out)
        .map(|i| (i * n / out)..((i + 1) * n).div_ceil(out))
        .collect()
}

/// The pooling as a matrix `[out, n]` (each row averages its bin), so that pooling a grid is
/// two matrix products.
pub(crate) fn pool_matrix(n: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * n];
    for (i, bin) in pool_bins(n, out).into_iter().enumerate() {
        let w = 1.0 / bin.len() as f32;
        for j in bin {
            m[i * n + j] = w;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilings_of_the_reference() {
        // (h', w') after the margins.
        assert_eq!(select_tiling(188, 339, 266, 12), (1, 1));
        assert_eq!(select_tiling(288, 400, 266, 12), (2, 4));
        assert_eq!(select_tiling(700, 300, 266, 12), (5, 2));
        assert_eq!(select_tiling(1000, 500, 266, 12), (4, 2));
        // Raised to the minimum, then over the limit: the longer side gives way.
        assert_eq!(select_tiling(270, 1500, 266, 12), (2, 6));
        assert_eq!(select_tiling(1500, 270, 266, 12), (6, 2));
        // More windows needed than allowed: proportional.
        assert_eq!(select_tiling(2000, 300, 266, 12), (6, 1));
        assert_eq!(select_tiling(4000, 4000, 266, 12), (3, 3));
        assert_eq!(select_tiling(888, 888, 266, 12), (3, 3));
    }

    #[test]
    fn stitching_and_pooling_geometry() {
        let (pieces, size) = stitch_layout((2, 4), 4);
        assert_eq!(size, (46, 84));
        assert_eq!(
            pieces[0],
            Piece {
                rows: 0..23,
                cols: 0..23,
                at_row: 0,
                at_col: 0
            }
        );
        assert_eq!(
            pieces[3],
            Piece {
                rows: 0..23,
                cols: 4..27,
                at_row: 0,
                at_col: 61
            }
        );
        assert_eq!(
            pieces[5],
            Piece {
                rows: 4..27,
                cols: 4..23,
                at_row: 23,
                at_col: 23
            }
        );
        let (one, size) = stitch_layout((1, 1), 4);
        assert_eq!((one[0].rows.clone(), size), (0..27, (27, 27)));
        // Every cell of the grid is covered exactly once.
        let mut seen = vec![0; 46 * 84];
        for p in &pieces {
            for r in p.rows.clone() {
                for c in p.cols.clone() {
                    seen[(p.at_row + r - p.rows.start) * 84 + p.at_col + c - p.cols.start] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert_eq!(pool_bins(46, 27)[0], 0..2);
        assert_eq!(pool_bins(46, 27)[26], 44..46);
        assert_eq!(pool_bins(27, 27)[5], 5..6);
    }

    #[test]
    fn bf16_rounding_ties_to_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        let lut = pixel_lut();
        assert_eq!((lut[0], lut[255]), (-1.0, 1.0));
        assert_eq!((lut[127], lut[128]), (-0.00390625, 0.0078125));
    }
}

//! Phi-3(.5)-Vision's image processor: a port of Microsoft's `image_processing_phi3_v.py`
//! (`Phi3VImageProcessor` in the Hub repo microsoft/Phi-3.5-vision-instruct; the copy read is
//! named in tests/fixtures/README.md), checked value by value against it by
//! `tests/candle_phi3v.rs`.
//!
//! What the reference does, in order, and what this port reproduces:
//! 1. **HD transform** (`HD_transform`, `hd_num` = `num_crops`): a portrait image (width <
//!    height) is first transposed (`Image.TRANSPOSE`), so the rest works on a landscape image and
//!    transposes back at the end. The number of 336-px columns is the largest `scale` with
//!    `scale * ceil(scale / ratio) <= num_crops`; the image is resized to `scale * 336` wide and
//!    `int(width / ratio)` high with **torchvision's `resize` on a PIL image, i.e. Pillow's
//!    bilinear filter** (Pillow-exact through [`crate::resample`]), then padded **with white,
//!    top and bottom only** (`padding_336`: `int((target - h) / 2)` rows on top, the rest below)
//!    to a multiple of 336. Because of the transposition, a portrait image is resized with the
//!    passes of Pillow's separable filter in the other order and padded left and right: the port
//!    transposes too, so the 8-bit rounding between the passes matches.
//! 2. **`ToTensor` + `Normalize`** in f32: `(v / 255 - mean) / std` per channel (not the
//!    Hugging Face processors' `v * (1/255)` in f64).
//! 3. **Global view**: the whole normalised HD image resized to 336 x 336 with
//!    `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` — PyTorch's bicubic
//!    (a = -0.75, no antialiasing, borders clamped), applied to the *normalised* floats, white
//!    padding included. Ported in [`bicubic_resize`] with PyTorch's f32 arithmetic and order of
//!    accumulation (rows of the 4x4 neighbourhood summed first along x, then along y).
//! 4. **Crops**: the HD image cut into 336 x 336 tiles in row-major order, after the global view:
//!    `[global, tile(0,0), tile(0,1), ...]`. The reference then pads the list with all-zero crops
//!    up to `num_crops + 1` so images can be stacked; those crops are never looked at by the
//!    model, so the port does not compute them (its [`Phi3vImage::pixels`] holds the real ones).
//! 5. **Token count** per image: `(rows * cols + 1) * 144 + 1 + (rows + 1) * 12` — 12 x 12
//!    merged tokens per crop, a separator per row of crop tokens, one `glb_GN`, and the global
//!    view's 12 x (12 + 1).

use image::RgbImage;

use crate::resample::Filter;

/// The reference's crop size (hard-coded there: CLIP ViT-L/14-336's input).
pub(crate) const CROP: usize = 336;

/// One image made ready for the model.
#[derive(Debug, Clone)]
pub struct Phi3vImage {
    /// `[1 + rows * cols, 3, 336, 336]` values: the global view, then the crops.
    pub pixels: Vec<f32>,
    /// Crops (rows, columns) of the HD image.
    pub grid: (usize, usize),
    /// The HD image's (height, width): the reference's `image_sizes` entry.
    pub size: (usize, usize),
    /// Image tokens this image becomes in the prompt.
    pub tokens: usize,
}

impl Phi3vImage {
    /// Crops the model encodes (the global view included).
    pub fn count(&self) -> usize {
        1 + self.grid.0 * self.grid.1
    }
}

/// Image tokens of an HD image of `rows` x `cols` crops (the reference's `num_img_tokens`).
pub fn image_tokens(rows: usize, cols: usize) -> usize {
    (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
}

fn transpose(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(h, w);
    for (x, y, p) in img.enumerate_pixels() {
        out.put_pixel(y, x, *p);
    }
    out
}

/// `HD_transform`: the resized, white-padded image, its sides multiples of 336.
pub(crate) fn hd_transform(img: &RgbImage, num_crops: usize) -> super::Result<RgbImage> {
    let transposed = img.width() < img.height();
    let img = if transposed {
        transpose(img)
    } else {
        img.clone()
    };
    let (w, h) = (img.width() as f64, img.height() as f64);
    let ratio = w / h;
    let mut scale = 1usize;
    while scale as f64 * (scale as f64 / ratio).ceil() <= num_crops as f64 {
        scale += 1;
    }
    scale -= 1;
    let new_w = scale * CROP;
    let new_h = (new_w as f64 / ratio) as usize;
    if scale == 0 || new_h == 0 {
        return Err(super::Error::request(format!(
            "an image of {}x{} cannot be tiled with num_crops = {num_crops} (the reference fails on it too)",
            img.width(),
            img.height()
        )));
    }
    let resized = super::resize_rgb(&img, new_w, new_h, Filter::Bilinear);
    let target = new_h.div_ceil(CROP) * CROP;
    let top = (target - new_h) / 2;
    let mut padded = RgbImage::from_pixel(new_w as u32, target as u32, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut padded, &resized, 0, top as i64);
    Ok(if transposed {
        transpose(&padded)
    } else {
        padded
    })
}

/// `ToTensor` then `Normalize`, channel-first, in f32.
fn normalize(img: &RgbImage, mean: &[f32; 3], std: &[f32; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * img.width() as usize * img.height() as usize);
    for c in 0..3 {
        for p in img.pixels() {
            out.push((p.0[c] as f32 / 255.0 - mean[c]) / std[c]);
        }
    }
    out
}

/// PyTorch's cubic convolution weights for a fractional position `t` (a = -0.75).
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let x1 = t;
    let x2 = 1.0 - t;
    [conv2(x1 + 1.0), conv1(x1), conv1(x2), conv2(x2 + 1.0)]
}

/// Source indices (clamped) and weights of every output position along one axis, as PyTorch's
/// `HelperInterpCubic::compute_indices_weights` makes them (align_corners = False).
fn cubic_axis(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(input as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let mut ids = [0usize; 4];
            for (j, id) in ids.iter_mut().enumerate() {
                *id = (index - 1 + j as i64).clamp(0, input as i64 - 1) as usize;
            }
            (ids, cubic_weights(t))
        })
        .collect()
}

/// `torch.nn.functional.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False)` of
/// one `[3, h, w]` image, with PyTorch's order of f32 operations.
pub(crate) fn bicubic_resize(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let ys = cubic_axis(h, oh);
    let xs = cubic_axis(w, ow);
    let mut out = Vec::with_capacity(3 * oh * ow);
    for c in 0..3 {
        let plane = &src[c * h * w..(c + 1) * h * w];
        for (yi, yw) in &ys {
            for (xi, xw) in &xs {
                let row = |y: usize| {
                    let r = &plane[y * w..(y + 1) * w];
                    let mut v = r[xi[0]] * xw[0];
                    for j in 1..4 {
                        v += r[xi[j]] * xw[j];
                    }
                    v
                };
                let mut v = row(yi[0]) * yw[0];
                for i in 1..4 {
                    v += row(yi[i]) * yw[i];
                }
                out.push(v);
            }
        }
    }
    out
}

/// The whole processor for one image.
pub fn process(
    img: &RgbImage,
    num_crops: usize,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> super::Result<Phi3vImage> {
    let hd = hd_transform(img, num_crops)?;
    let (w, h) = (hd.width() as usize, hd.height() as usize);
    let (rows, cols) = (h / CROP, w / CROP);
    let norm = normalize(&hd, mean, std);
    let mut pixels = bicubic_resize(&norm, h, w, CROP, CROP);
    pixels.reserve(rows * cols * 3 * CROP * CROP);
    for r in 0..rows {
        for col in 0..cols {
            for c in 0..3 {
                for y in 0..CROP {
                    let start = c * h * w + (r * CROP + y) * w + col * CROP;
                    pixels.extend_from_slice(&norm[start..start + CROP]);
                }
            }
        }
    }
    Ok(Phi3vImage {
        pixels,
        grid: (rows, cols),
        size: (h, w),
        tokens: image_tokens(rows, cols),
    })
}

/// What preprocessing made of the images of one request, for reports: two runs that differ only
/// in preprocessing differ here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreprocessSummary {
    pub images: Vec<ImageSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageSummary {
    /// Image tokens in the prompt.
    pub tokens: usize,
    /// Crops (rows, columns); the global view comes on top of these.
    pub grid: (usize, usize),
    /// The HD image's (height, width).
    pub size: (usize, usize),
    /// FNV-1a (64-bit) of the pixel values' f32 bytes (little endian), global view and crops.
    pub pixel_hash: String,
}

/// FNV-1a over the little-endian bytes of `values`.
pub fn pixel_hash(values: &[f32]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

impl PreprocessSummary {
    pub fn of(images: &[Phi3vImage]) -> Self {
        Self {
            images: images
                .iter()
                .map(|i| ImageSummary {
                    tokens: i.tokens,
                    grid: i.grid,
                    size: i.size,
                    pixel_hash: pixel_hash(&i.pixels),
                })
                .collect(),
        }
    }
}

//! Which image formats a server decodes, and lossless PNG re-encoding for the others.
//!
//! Suites may show PNG, JPEG, GIF, WebP or BMP images. Some servers cannot read all of them:
//! llama.cpp's llama-server decodes images with stb_image (PNG, JPEG, GIF, BMP, …) and hands
//! anything else to ffmpeg, so without ffmpeg on its PATH a WebP image gets HTTP 400 "Failed to
//! load image or audio file". A backend that declares the formats its server takes gets every
//! other image decoded here and sent as PNG of the same pixels: same size, same colour type
//! (grey, grey + alpha, RGB, RGBA; 8 or 16 bits), nothing resampled or quantised. An animated
//! image is sent as its first frame, which is what stb_image reads of a GIF too.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use image::{DynamicImage, ImageFormat};

use crate::config::image::{Image, ImageError};

/// The formats llama-server decodes itself (stb_image), without ffmpeg.
pub(crate) const LLAMA_SERVER: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/bmp"];

/// How a backend sends images: as their files, or re-encoded as PNG when the server does not
/// take the file's format.
#[derive(Default)]
pub(crate) struct ImageFormats {
    /// MIME types the server takes; `None`: every format a suite may hold.
    accepted: Option<&'static [&'static str]>,
    /// Re-encoded images as `data:` URLs, by file, made once per run.
    reencoded: Mutex<HashMap<PathBuf, Arc<str>>>,
}

impl ImageFormats {
    /// A server that takes only `accepted` (MIME types).
    pub(crate) fn only(accepted: &'static [&'static str]) -> Self {
        Self {
            accepted: Some(accepted),
            reencoded: Mutex::default(),
        }
    }

    /// Whether `mime` is sent as it is.
    pub(crate) fn accepts(&self, mime: &str) -> bool {
        self.accepted.is_none_or(|a| a.contains(&mime))
    }

    /// The image as a `data:` URL the server can read: the file itself when the server takes
    /// its format, else a PNG of its pixels.
    pub(crate) fn data_url(&self, img: &Image) -> Result<Arc<str>, ImageError> {
        if self.accepts(img.mime) {
            return img.data_url();
        }
        if let Some(hit) = self.cache().get(&img.path) {
            return Ok(hit.clone());
        }
        let bytes = img.bytes()?;
        let png = to_png(&bytes).map_err(|e| ImageError::Reencode {
            shown: img.shown.clone(),
            mime: img.mime,
            source: Arc::new(e),
        })?;
        tracing::debug!(image = %img.shown, from = img.mime, "re-encoded as PNG");
        use base64::Engine;
        let url: Arc<str> = Arc::from(format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        ));
        self.cache().insert(img.path.clone(), url.clone());
        Ok(url)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<str>>> {
        self.reencoded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decodes an image file and encodes its pixels as PNG, losslessly: PNG holds every 8- and
/// 16-bit grey, grey + alpha, RGB and RGBA image as it is. Float images (which no format a suite
/// may use decodes to) become 16-bit RGBA.
pub(crate) fn to_png(bytes: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    let decoded = image::load_from_memory(bytes)?;
    let pixels = match decoded {
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            DynamicImage::ImageRgba16(decoded.to_rgba16())
        }
        other => other,
    };
    let mut out = Cursor::new(Vec::new());
    pixels.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lossless WebP of a 7×5 RGBA pattern (odd sizes, every pixel different, with alpha).
    fn webp_and_pixels() -> (Vec<u8>, image::RgbaImage) {
        let img = image::RgbaImage::from_fn(7, 5, |x, y| {
            image::Rgba([
                (x * 37) as u8,
                (y * 51) as u8,
                (x * y * 13) as u8,
                255 - x as u8,
            ])
        });
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(img.as_raw(), 7, 5, image::ExtendedColorType::Rgba8)
            .unwrap();
        (webp, img)
    }

    #[test]
    fn webp_becomes_a_png_of_the_same_pixels() {
        let (webp, pixels) = webp_and_pixels();
        assert_eq!(
            image::guess_format(&webp).unwrap(),
            ImageFormat::WebP,
            "the input is a WebP"
        );
        let png = to_png(&webp).unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        let back = image::load_from_memory(&png).unwrap();
        assert!(matches!(back, DynamicImage::ImageRgba8(_)), "RGBA kept");
        assert_eq!(back.to_rgba8(), pixels, "pixels unchanged");
    }

    #[test]
    fn grey_and_sixteen_bit_images_keep_their_colour_type() {
        let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 80 + y) as u8]));
        let mut bmp = Cursor::new(Vec::new());
        DynamicImage::ImageLuma8(grey.clone())
            .write_to(&mut bmp, ImageFormat::Bmp)
            .unwrap();
        let back = image::load_from_memory(&to_png(bmp.get_ref()).unwrap()).unwrap();
        assert_eq!(back.to_luma8(), grey);

        let wide = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(2, 2, |x, y| {
            image::Rgb([x as u16 * 40_000 + 7, y as u16 * 30_000 + 1, 65_535])
        });
        let mut png16 = Cursor::new(Vec::new());
        DynamicImage::ImageRgb16(wide.clone())
            .write_to(&mut png16, ImageFormat::Png)
            .unwrap();
        let back = image::load_from_memory(&to_png(png16.get_ref()).unwrap()).unwrap();
        assert!(matches!(back, DynamicImage::ImageRgb16(_)));
        assert_eq!(back.to_rgb16(), wide);
    }

    #[test]
    fn undecodable_bytes_are_an_error() {
        let e = to_png(b"RIFF\0\0\0\0WEBPnot really").unwrap_err();
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn llama_server_takes_png_jpeg_gif_bmp_only() {
        let f = ImageFormats::only(LLAMA_SERVER);
        for m in ["image/png", "image/jpeg", "image/gif", "image/bmp"] {
            assert!(f.accepts(m), "{m}");
        }
        assert!(!f.accepts("image/webp"));
        assert!(ImageFormats::default().accepts("image/webp"));
    }
}

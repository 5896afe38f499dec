//! Images referenced by suites: checked at load time (exists, decodable header), read lazily.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Why an image cannot be used. Cloned out of the image's once-read cache, so the source is
/// shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The suite's image file cannot be read (it was checked at load time: it went away).
    #[error("cannot read image {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Bytes received (a request to `vlmtest serve`) that are not an image vlmtest reads.
    #[error("{shown} cannot be decoded: {why} (expected PNG, JPEG, GIF, WebP or BMP)")]
    Undecodable { shown: String, why: String },
    /// A server takes only some formats and this image could not be converted to PNG for it.
    #[error("image `{shown}` ({mime}) cannot be re-encoded as PNG for this server: {source}")]
    Reencode {
        shown: String,
        mime: &'static str,
        #[source]
        source: Arc<image::ImageError>,
    },
}

/// An image a case shows the model.
#[derive(Debug)]
pub struct Image {
    /// Absolute path on disk (empty for an image received as bytes).
    pub path: PathBuf,
    /// The path as written in the suite, for messages and reports.
    pub shown: String,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    bytes: OnceLock<Result<Arc<Vec<u8>>, ImageError>>,
    data_url: OnceLock<Result<Arc<str>, ImageError>>,
}

impl Image {
    /// The image as a `data:` URL (base64), encoded once.
    pub fn data_url(&self) -> Result<Arc<str>, ImageError> {
        self.data_url
            .get_or_init(|| {
                use base64::Engine;
                let bytes = self.bytes()?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(bytes.as_slice());
                Ok(Arc::from(format!("data:{};base64,{b64}", self.mime)))
            })
            .clone()
    }

    /// An image received as bytes rather than read from a suite's folder (`vlmtest serve`
    /// decodes the `data:` URLs of requests into it); `shown` names it in messages. Refused
    /// unless its header decodes as PNG, JPEG, GIF, WebP or BMP with a non-zero size.
    pub(crate) fn from_bytes(bytes: Vec<u8>, shown: String) -> Result<Image, ImageError> {
        let undecodable = |why: String| ImageError::Undecodable {
            shown: shown.clone(),
            why,
        };
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(|e| undecodable(e.to_string()))?;
        let mime = reader
            .format()
            .and_then(mime_of)
            .ok_or_else(|| undecodable("unknown format".into()))?;
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| undecodable(e.to_string()))?;
        if width == 0 || height == 0 {
            return Err(undecodable("zero-sized image".into()));
        }
        Ok(Image {
            path: PathBuf::new(),
            shown,
            mime,
            width,
            height,
            bytes: OnceLock::from(Ok(Arc::new(bytes))),
            data_url: OnceLock::new(),
        })
    }

    /// The file's bytes, read once.
    pub fn bytes(&self) -> Result<Arc<Vec<u8>>, ImageError> {
        self.bytes
            .get_or_init(|| {
                std::fs::read(&self.path)
                    .map(Arc::new)
                    .map_err(|e| ImageError::Read {
                        path: self.path.clone(),
                        source: Arc::new(e),
                    })
            })
            .clone()
    }
}

fn mime_of(format: image::ImageFormat) -> Option<&'static str> {
    use image::ImageFormat as F;
    Some(match format {
        F::Png => "image/png",
        F::Jpeg => "image/jpeg",
        F::Gif => "image/gif",
        F::WebP => "image/webp",
        F::Bmp => "image/bmp",
        _ => return None,
    })
}

/// Checks images once per path, however many cases use them.
#[derive(Default)]
pub struct ImageCache {
    seen: HashMap<PathBuf, Result<Arc<Image>, String>>,
}

impl ImageCache {
    /// Resolves `written` relative to `base` and checks that it is a decodable image.
    pub fn get(&mut self, base: &Path, written: &str) -> Result<Arc<Image>, String> {
        let path = base.join(written);
        if let Some(hit) = self.seen.get(&path) {
            return hit.clone();
        }
        let result = probe(&path, written);
        self.seen.insert(path, result.clone());
        result
    }
}

fn probe(path: &Path, written: &str) -> Result<Arc<Image>, String> {
    if written.trim().is_empty() {
        return Err("empty image path (expected a file relative to the suite)".into());
    }
    if !path.is_file() {
        return Err(format!(
            "image `{written}` not found (looked for {})",
            path.display()
        ));
    }
    let undecodable = |why: String| {
        format!("image `{written}` cannot be decoded: {why} (expected PNG, JPEG, GIF, WebP or BMP)")
    };
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| undecodable(e.to_string()))?;
    let mime = reader
        .format()
        .and_then(mime_of)
        .ok_or_else(|| undecodable("unknown format".into()))?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| undecodable(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(undecodable("zero-sized image".into()));
    }
    Ok(Arc::new(Image {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        shown: written.to_string(),
        mime,
        width,
        height,
        bytes: OnceLock::new(),
        data_url: OnceLock::new(),
    }))
}

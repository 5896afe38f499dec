//! The `<image>` placeholders of a templated prompt, expanded as transformers' processors
//! expand them (SmolVLM's `Idefics3Processor`, `LlavaNextProcessor`): the chat template writes
//! one `<image>` per image, in order; the processor replaces the `i`-th with the text of the
//! `i`-th image (its tile markers and image tokens), and the count must match.

use image::RgbImage;

use super::{Error, Result};

/// The placeholder chat templates write for an image.
pub(crate) const IMAGE: &str = "<image>";

/// Replaces each [`IMAGE`] of `prompt` with what `expand` makes of the image in its place;
/// returns the text and what `expand` returned for each image, in order. Refuses a prompt
/// whose placeholders do not match the images one for one.
pub(crate) fn expand_images<T>(
    prompt: &str,
    images: &[RgbImage],
    mut expand: impl FnMut(&RgbImage) -> (String, T),
) -> Result<(String, Vec<T>)> {
    let pieces: Vec<&str> = prompt.split(IMAGE).collect();
    if pieces.len() - 1 != images.len() {
        return Err(Error::request(format!(
            "the prompt has {} <image> placeholders for {} images",
            pieces.len() - 1,
            images.len()
        )));
    }
    let mut text = String::from(pieces[0]);
    let mut out = Vec::with_capacity(images.len());
    for (img, rest) in images.iter().zip(&pieces[1..]) {
        let (expanded, value) = expand(img);
        text.push_str(&expanded);
        text.push_str(rest);
        out.push(value);
    }
    Ok((text, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_takes_its_image_in_order() {
        let imgs = [RgbImage::new(1, 2), RgbImage::new(3, 4)];
        let (text, sizes) = expand_images("a<image>b<image>c", &imgs, |i| {
            (format!("[{}]", i.width()), i.height())
        })
        .unwrap();
        assert_eq!(text, "a[1]b[3]c");
        assert_eq!(sizes, [2, 4]);
        let e = expand_images("<image>", &imgs, |_| (String::new(), ())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the prompt has 1 <image> placeholders for 2 images"
        );
    }
}

//! Outputs as pictures: diffusers' image grid (`--grid`, the HTML report) and difference maps
//! of two outputs (the HTML report's side-by-side views).
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};

/// Whether an output of this shape is a batch of images: NHWC with 1 or 3 channels (diffusers'
/// `output_type="np"`).
pub fn is_image(shape: &[i64]) -> bool {
    shape.len() == 4 && (shape[3] == 3 || shape[3] == 1) && shape[1] > 0 && shape[2] > 0
}

/// The grid's layout for `n` images: `cols = ceil(sqrt(n))`, row-major (`make_image_grid`).
fn layout(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols).max(1), cols)
}

/// Paints a grid of `n` cells of `h` × `w`, each pixel from `pixel(i, y, x)`.
fn paint(n: usize, h: usize, w: usize, pixel: impl Fn(usize, usize, usize) -> Rgb<u8>) -> RgbImage {
    let (rows, cols) = layout(n);
    let mut grid = RgbImage::new((cols * w) as u32, (rows * h) as u32);
    for i in 0..n {
        let (ox, oy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            for x in 0..w {
                grid.put_pixel((ox + x) as u32, (oy + y) as u32, pixel(i, y, x));
            }
        }
    }
    grid
}

fn dims(shape: &[i64], values: usize) -> Result<(usize, usize, usize, usize)> {
    if !is_image(shape) {
        return Err(Error::InvalidArgument(format!(
            "a grid needs images (output type np, NHWC with 1 or 3 channels), got shape {shape:?}"
        )));
    }
    let d = (
        shape[0] as usize,
        shape[1] as usize,
        shape[2] as usize,
        shape[3] as usize,
    );
    if d.0 * d.1 * d.2 * d.3 != values {
        return Err(Error::InvalidArgument(format!(
            "shape {shape:?} does not hold {values} values"
        )));
    }
    Ok(d)
}

/// `make_image_grid(numpy_to_pil(images), rows, cols)`: NHWC images in [0, 1] as 8-bit RGB
/// (`(x * 255).round()`), row-major, `cols = ceil(sqrt(n))`; empty cells stay black.
pub fn image_grid(shape: &[i64], values: &[f64]) -> Result<RgbImage> {
    let (n, h, w, c) = dims(shape, values.len())?;
    Ok(paint(n, h, w, |i, y, x| {
        let at = |ch: usize| {
            let v = values[((i * h + y) * w + x) * c + ch.min(c - 1)] as f32;
            (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8
        };
        Rgb([at(0), at(1), at(2)])
    }))
}

/// The difference map of two outputs of one shape, in the same grid: each pixel's largest
/// |a - b| over its channels, scaled so the largest difference of all is brightest (black,
/// red, yellow, white). Returns the map and that largest difference.
pub fn difference_map(shape: &[i64], a: &[f64], b: &[f64]) -> Result<(RgbImage, f64)> {
    let (n, h, w, c) = dims(shape, a.len())?;
    if b.len() != a.len() {
        return Err(Error::InvalidArgument(format!(
            "outputs of {} and {} values cannot be compared",
            a.len(),
            b.len()
        )));
    }
    let diff = |i: usize, y: usize, x: usize| {
        (0..c)
            .map(|ch| {
                let k = ((i * h + y) * w + x) * c + ch;
                (a[k] - b[k]).abs()
            })
            .fold(0.0, f64::max)
    };
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let map = paint(n, h, w, |i, y, x| {
        let v = if max > 0.0 { diff(i, y, x) / max } else { 0.0 };
        heat(v)
    });
    Ok((map, max))
}

/// 0 → black, 1/3 → red, 2/3 → yellow, 1 → white.
fn heat(v: f64) -> Rgb<u8> {
    let v = v.clamp(0.0, 1.0) * 3.0;
    let ch = |x: f64| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    Rgb([ch(v), ch(v - 1.0), ch(v - 2.0)])
}

/// The image as PNG bytes.
pub fn png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| Error::Internal(format!("encoding a PNG: {e}")))?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_lays_out_like_make_image_grid() {
        // Three 1x2 images: two columns, two rows, the last cell black.
        let v: Vec<f64> = (0..6).map(|i| i as f64 / 5.0).collect();
        let g = image_grid(&[3, 1, 2, 1], &v).unwrap();
        assert_eq!(g.dimensions(), (4, 2));
        assert_eq!(g.get_pixel(1, 0).0, [51, 51, 51]);
        assert_eq!(g.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(3, 1).0, [0, 0, 0]);
    }

    #[test]
    fn difference_map_brightest_where_the_outputs_differ_most() {
        let a = [0.0, 0.0, 0.5, 1.0];
        let b = [0.0, 0.1, 0.5, 0.7];
        let (m, max) = difference_map(&[1, 2, 2, 1], &a, &b).unwrap();
        assert!((max - 0.3).abs() < 1e-12);
        assert_eq!(m.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(m.get_pixel(1, 1).0, [255, 255, 255]);
        assert!(difference_map(&[1, 2, 2, 1], &a, &b[..3]).is_err());
        assert!(image_grid(&[1, 4], &a).is_err());
    }
}

//! `reprodiff run`: one pipeline call from command-line flags, as a one-scenario run, printed
//! as a line or a JSON record, optionally saved as .npy and as a PNG image grid.
use super::suite::Scenario;
use crate::error::{Error, Result};
use std::path::Path;
use tch::Tensor;

/// What to do with the output besides printing it.
#[derive(Debug, Default)]
pub struct Outputs<'a> {
    pub save: Option<&'a Path>,
    pub grid: Option<&'a Path>,
    pub json: bool,
}

/// Runs `scenario` (validated, its determinism applied) and reports its output.
pub fn run(scenario: &Scenario, out: Outputs) -> Result<()> {
    scenario.run.validate().map_err(Error::InvalidArgument)?;
    scenario.determinism.resolve().apply()?;
    let start = std::time::Instant::now();
    let output = scenario.run.run(scenario.device, None, false)?;
    let obs = super::observe::describe(
        output.tensor,
        output.unseeded_seed,
        start.elapsed().as_secs_f64(),
    )?;
    let stored = obs.stored.as_ref().expect("describe keeps the output");
    if let Some(path) = out.save {
        stored
            .write_npy(path)
            .map_err(|e| Error::Torch(format!("writing {}: {e}", path.display())))?;
    }
    if let Some(path) = out.grid {
        write_grid(stored, path)?;
    }
    if out.json {
        let record = serde_json::json!({
            "schema": 1,
            "spec": scenario,
            "output": {
                "shape": obs.shape,
                "dtype": obs.dtype,
                "sha256": obs.sha256,
                "metrics": obs.metrics,
                "unseeded_seed": obs.unseeded_seed,
                "elapsed_s": obs.elapsed_s,
            },
            "environment": obs.environment,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&record).expect("serialises")
        );
        return Ok(());
    }
    println!(
        "{:?} {}  sum_abs {}  max_abs {}  sha256 {}  ({:.2} s)",
        obs.shape,
        obs.dtype,
        obs.metrics["sum_abs"],
        obs.metrics["max_abs"],
        &obs.sha256[..12],
        obs.elapsed_s
    );
    if let Some(seed) = obs.unseeded_seed {
        println!("no seed given: the global generator was seeded with {seed} (pass --generator global --seed {seed} to repeat)");
    }
    for path in [out.save, out.grid].into_iter().flatten() {
        println!("saved {}", path.display());
    }
    Ok(())
}

/// `make_image_grid(numpy_to_pil(images), rows, cols)`: NHWC images in [0, 1] as 8-bit RGB
/// (`(x * 255).round()`), row-major, `cols = ceil(sqrt(n))`; empty cells stay black.
pub fn write_grid(images: &Tensor, path: &Path) -> Result<()> {
    let size = images.size();
    if size.len() != 4 || !(size[3] == 3 || size[3] == 1) {
        return Err(Error::InvalidArgument(format!(
            "--grid needs images (output type np, NHWC with 1 or 3 channels), got shape {size:?}"
        )));
    }
    let (n, h, w, c) = (
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    );
    let values = crate::torch::tensor_to_f64(images)?;
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    let rows = n.div_ceil(cols);
    let mut grid = image::RgbImage::new((cols * w) as u32, (rows * h) as u32);
    for i in 0..n {
        let (ox, oy) = ((i % cols) * w, (i / cols) * h);
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| {
                    let v = values[((i * h + y) * w + x) * c + ch.min(c - 1)] as f32;
                    (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8
                };
                grid.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    image::Rgb([at(0), at(1), at(2)]),
                );
            }
        }
    }
    grid.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))
}

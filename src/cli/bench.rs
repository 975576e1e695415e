//! `bench ddim`, `bench sd`, `bench gemm`: timings as JSON (ci/bench.py compares them with
//! diffusers).
use crate::error::{exit, Result};
use crate::pipelines::ddim::flags::DdimBenchFlags;
use crate::pipelines::stable_diffusion::flags::SdBenchFlags;
use crate::pipelines::BenchFlags;
use clap::Subcommand;

/// `bench PIPELINE`: one line per pipeline, its flags the pipeline's own
/// (`pipelines::*::flags`), and the portable kernels' GEMM.
#[derive(Subcommand)]
pub(crate) enum BenchPipeline {
    /// StableDiffusionPipeline, the seed document's prompt, guidance 7.5, a CPU generator
    /// seeded 0, re-seeded before each run.
    Sd(SdBenchFlags),
    /// The portable kernels' GEMM against libtorch's sgemm (matmul) on one float32 product of
    /// [m, k] by [k, n], timed in turn; prints JSON with each side's GFLOP/s and their medians.
    Gemm {
        /// Rows of a (and of the output).
        #[arg(long, default_value_t = 1024)]
        m: usize,
        /// Columns of b (and of the output).
        #[arg(long, default_value_t = 128)]
        n: usize,
        /// The reduction's length.
        #[arg(long, default_value_t = 1152)]
        k: usize,
        /// Samples per side (each a burst of products after a rest).
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// libtorch's threads (default: the portable kernels' count, rayon's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// DDIMPipeline with a CPU generator seeded 0, re-seeded before each run.
    Ddim(DdimBenchFlags),
}

/// `bench PIPELINE`: load once, one warm-up run, then timed runs.
pub(crate) fn bench(pipeline: &BenchPipeline) -> Result<i32> {
    match pipeline {
        BenchPipeline::Ddim(flags) => print_bench(flags)?,
        BenchPipeline::Sd(flags) => print_bench(flags)?,
        BenchPipeline::Gemm {
            m,
            n,
            k,
            runs,
            threads,
        } => {
            let b = crate::portable::bench::gemm(*m, *n, *k, *runs, *threads)?;
            println!("{}", serde_json::to_string(&b).expect("serialisable"));
        }
    }
    Ok(exit::OK)
}

fn print_bench(flags: &dyn BenchFlags) -> Result<()> {
    let b = flags.bench()?;
    println!(
        "{}",
        serde_json::json!({"impl": "reprodiff", "kernels": flags.shared().kernels,
                           "steps": flags.steps(), "threads": b.threads,
                           "kernel_threads": rayon::current_num_threads(),
                           "seconds": b.seconds, "peak_rss_kb": b.peak_rss_kb, "sha256": b.sha256,
                           "malloc": crate::torch::memory::malloc_policy()})
    );
    Ok(())
}

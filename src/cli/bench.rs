//! `bench ddim`, `bench sd`, `bench gemm`: timings as JSON (ci/bench.py compares them with
//! diffusers).
use super::select::kernels_flag;
use crate::error::{exit, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum BenchPipeline {
    /// StableDiffusionPipeline, the seed document's prompt, guidance 7.5, a CPU generator
    /// seeded 0, re-seeded before each run.
    Sd {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: usize,
        /// Height and width (default: the model's).
        #[arg(long)]
        size: Option<i64>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// native (libtorch's kernels) or portable (reprodiff's).
        #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
        kernels: String,
    },
    /// The portable kernels' GEMM against libtorch's sgemm (matmul) on one float32 product of
    /// [m, k] by [k, n], timed in turn; prints JSON with each side's GFLOP/s and their medians.
    Gemm {
        #[arg(long, default_value_t = 1024)]
        m: usize,
        #[arg(long, default_value_t = 128)]
        n: usize,
        #[arg(long, default_value_t = 1152)]
        k: usize,
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// libtorch's threads (default: the portable kernels' count, rayon's).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// DDIMPipeline with a CPU generator seeded 0, re-seeded before each run.
    Ddim {
        #[arg(long)]
        model: String,
        #[arg(long)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// native (libtorch's kernels) or portable (reprodiff's).
        #[arg(long, default_value = "native", value_parser = ["native", "portable"])]
        kernels: String,
    },
}

/// `bench PIPELINE`: load once, one warm-up run, then timed runs.
pub(crate) fn bench(pipeline: &BenchPipeline) -> Result<i32> {
    match pipeline {
        BenchPipeline::Ddim {
            model,
            steps,
            runs,
            threads,
            kernels,
        } => {
            let b = crate::pipelines::ddim::bench(
                model,
                *steps,
                *runs,
                *threads,
                kernels_flag(kernels),
            )?;
            print_bench(&b, *steps, kernels);
        }
        BenchPipeline::Sd {
            model,
            steps,
            size,
            runs,
            threads,
            kernels,
        } => {
            let b = crate::pipelines::stable_diffusion::bench(
                model,
                *steps,
                *size,
                *runs,
                *threads,
                kernels_flag(kernels),
            )?;
            print_bench(&b, *steps, kernels);
        }
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

fn print_bench(b: &crate::pipelines::Bench, steps: usize, kernels: &str) {
    println!(
        "{}",
        serde_json::json!({"impl": "reprodiff", "kernels": kernels, "steps": steps,
                           "threads": b.threads, "kernel_threads": rayon::current_num_threads(),
                           "seconds": b.seconds, "peak_rss_kb": b.peak_rss_kb, "sha256": b.sha256})
    );
}

//! `reprodiff matrix`: one suite under each combination of CPU kernel class, thread count and
//! knob set ([`crate::torch::knobs`]: determinism, dtype, device, channels_last, ...) this host
//! can run, each in its own `reprodiff check` child process (ATen, oneDNN and MKL read
//! their settings once, when libtorch starts), each writing its records to `<out>/<combo>/`.
//! `reprodiff report <out>/*` then shows the drift between them.
use crate::error::{Error, Result};
use crate::torch::knobs::{self, Knobs};
use std::path::{Path, PathBuf};

/// Overrides every scenario's thread count (what `matrix --threads` sets in each child).
pub const THREADS_ENV: &str = "REPRODIFF_THREADS";

/// REPRODIFF_THREADS, if set: every scenario then runs with that many threads.
pub fn threads_override() -> Result<Option<usize>> {
    match std::env::var(THREADS_ENV) {
        Err(_) => Ok(None),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Error::env(THREADS_ENV, v, "must be a whole number >= 1")),
        },
    }
}

/// A CPU kernel class a host can be asked to run as.
pub struct CpuClass {
    pub name: &'static str,
    /// The variables that select it.
    pub env: &'static [(&'static str, &'static str)],
    /// The cpuinfo flags it needs.
    pub needs: &'static [&'static str],
    pub what: &'static str,
}

pub const CPU_CLASSES: &[CpuClass] = &[
    CpuClass {
        name: "native",
        env: &[],
        needs: &[],
        what: "whatever this CPU and libtorch choose",
    },
    CpuClass {
        name: "avx512",
        env: &[
            ("ATEN_CPU_CAPABILITY", "avx512"),
            ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"),
        ],
        needs: &["avx512f", "avx512bw", "avx512vl"],
        what: "ATen avx512, oneDNN at avx512_core",
    },
    CpuClass {
        name: "avx2",
        env: &[
            ("ATEN_CPU_CAPABILITY", "avx2"),
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
        ],
        needs: &["avx2", "fma"],
        what: "ATen, oneDNN and MKL held to AVX2",
    },
    CpuClass {
        name: "sse41",
        env: &[
            ("ATEN_CPU_CAPABILITY", "default"),
            ("ONEDNN_MAX_CPU_ISA", "SSE41"),
        ],
        needs: &[],
        what: "ATen default, oneDNN held to SSE4.1",
    },
    CpuClass {
        name: "mkl-compatible",
        env: &[("MKL_CBWR", "COMPATIBLE")],
        needs: &[],
        what: "MKL's conditional-numerical-reproducibility COMPATIBLE path",
    },
];

/// One combination: its folder name, its environment, and why it cannot run here (if so).
#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    pub label: String,
    pub env: Vec<(String, String)>,
    pub skipped: Option<String>,
}

/// The matrix's setting axes, each a list of values (an empty list: the axis is absent).
#[derive(Debug, Clone, Default)]
pub struct SettingAxes {
    /// `default`, `full`.
    pub determinism: Vec<String>,
    /// `f32`, `bf16`, `f16`.
    pub dtype: Vec<String>,
    /// `cpu`, `cuda`.
    pub device: Vec<String>,
    /// `native`, `portable`.
    pub kernels: Vec<String>,
    /// `none` or knob sets joined with `+`.
    pub knob: Vec<String>,
}

/// The knob sets of the matrix's setting axes: every combination of one value per axis
/// (`--determinism default,full`, `--dtype f32,bf16`, `--device cpu,cuda`, `--kernels
/// native,portable`, `--knob none,channels-last,...`), an absent axis adding nothing. `cpu`,
/// `native` and `none` add no knob; a `--knob` value may join several with `+`.
pub fn knob_sets(axes: &SettingAxes) -> Result<Vec<Knobs>> {
    let axis = |flag: &'static str, values: &[String], f: &dyn Fn(&str) -> Result<String>| {
        if values.is_empty() {
            return Ok(vec![String::new()]);
        }
        values
            .iter()
            .map(|v| f(v).map_err(|e| Error::flag(flag, v, e.to_string())))
            .collect::<Result<Vec<String>>>()
    };
    let axes = [
        axis("determinism", &axes.determinism, &|v| match v {
            "default" | "full" => Ok(format!("det-{v}")),
            _ => Err(Error::InvalidArgument("expected default or full".into())),
        })?,
        axis("dtype", &axes.dtype, &|v| match v {
            "f32" | "bf16" | "f16" => Ok(v.to_string()),
            _ => Err(Error::InvalidArgument("expected f32, bf16 or f16".into())),
        })?,
        axis("device", &axes.device, &|v| match v {
            "cpu" => Ok(String::new()),
            "cuda" => Ok("cuda".into()),
            _ => Err(Error::InvalidArgument("expected cpu or cuda".into())),
        })?,
        axis("kernels", &axes.kernels, &|v| match v {
            "native" => Ok(String::new()),
            "portable" => Ok("portable".into()),
            _ => Err(Error::InvalidArgument("expected native or portable".into())),
        })?,
        axis("knob", &axes.knob, &|v| match v {
            "none" => Ok(String::new()),
            _ => Knobs::parse(v).map(|k| k.tokens().join("+")),
        })?,
    ];
    // The cross product, the first axis varying slowest.
    let mut specs = vec![String::new()];
    for values in &axes {
        specs = specs
            .iter()
            .flat_map(|s| values.iter().map(move |v| format!("{s},{v}")))
            .collect();
    }
    specs.iter().map(|s| Knobs::parse(s)).collect()
}

/// The combinations of `cpu_classes` × `threads` (`None`: the suite's own thread count) ×
/// `knobs`, with the ones this CPU (`isa`: its cpuinfo flags) or host lacks marked skipped.
/// Unknown names are exit 2. Labels are `CLASS[-threadsN][+KNOB...]` ([`parse_label`]).
pub fn combinations(
    cpu_classes: &[String],
    threads: &[Option<usize>],
    knobs: &[Knobs],
    isa: &[String],
) -> Result<Vec<Combination>> {
    let mut out = Vec::new();
    for name in cpu_classes {
        let Some(class) = CPU_CLASSES.iter().find(|c| c.name == name) else {
            let known: Vec<&str> = CPU_CLASSES.iter().map(|c| c.name).collect();
            let expected = format!("unknown (known: {})", known.join(", "));
            return Err(Error::flag("cpu-class", name, expected));
        };
        let missing: Vec<&str> = class
            .needs
            .iter()
            .copied()
            .filter(|f| !isa.iter().any(|x| x == f))
            .collect();
        for t in threads {
            if *t == Some(0) {
                return Err(Error::InvalidArgument("--threads: must be >= 1".into()));
            }
            for k in knobs {
                let mut env: Vec<(String, String)> = class
                    .env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if let Some(n) = t {
                    env.push((THREADS_ENV.into(), n.to_string()));
                }
                let mut label = match t {
                    Some(n) => format!("{name}-threads{n}"),
                    None => name.clone(),
                };
                if !k.is_empty() {
                    env.push((knobs::ENV.into(), k.tokens().join(",")));
                    label = format!("{label}+{}", k.tokens().join("+"));
                }
                let skipped = if !missing.is_empty() {
                    Some(format!("this CPU lacks {}", missing.join(", ")))
                } else {
                    k.unavailable()
                };
                out.push(Combination {
                    label,
                    env,
                    skipped,
                });
            }
        }
    }
    Ok(out)
}

/// One combination from its label, `CLASS[-threadsN][+KNOB...]` (`native`, `avx2-threads1`,
/// `native-threads2+channels-last+bf16`): what `localize` takes as a side. One the host cannot
/// run is an error saying why.
pub fn parse_label(spec: &str, isa: &[String]) -> Result<Combination> {
    let (head, knob_part) = spec.split_once('+').unwrap_or((spec, ""));
    let (class, threads) = match head.rsplit_once("-threads") {
        Some((c, n)) => (
            c,
            Some(n.parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!("{spec}: expected CLASS[-threadsN][+KNOB...]"))
            })?),
        ),
        None => (head, None),
    };
    let k = Knobs::parse(knob_part)?;
    let mut c = combinations(&[class.to_string()], &[threads], &[k], isa)?.remove(0);
    if let Some(why) = c.skipped.take() {
        return Err(Error::Unavailable(format!("{spec}: {why}")));
    }
    c.label = spec.to_string();
    Ok(c)
}

/// What one child `check` did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub label: String,
    pub records: Option<PathBuf>,
    /// The child's closing line ("N passed, N failed, N skipped"), or why it did not run.
    pub summary: String,
}

/// Runs `reprodiff check ARGS --out <out>/<label>` for every combination not skipped.
pub fn run(
    exe: &Path,
    check_args: &[String],
    combos: &[Combination],
    out: &Path,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for c in combos {
        if let Some(why) = &c.skipped {
            eprintln!("matrix: {} skipped: {why}", c.label);
            outcomes.push(Outcome {
                label: c.label.clone(),
                records: None,
                summary: format!("skipped: {why}"),
            });
            continue;
        }
        let dir = out.join(&c.label);
        eprintln!("matrix: {} ...", c.label);
        let result = std::process::Command::new(exe)
            .arg("check")
            .args(check_args)
            .arg("--save-outputs")
            .arg("--out")
            .arg(&dir)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .output()
            .map_err(|e| Error::io(exe, e))?;
        let stdout = String::from_utf8_lossy(&result.stdout);
        let summary = match result.status.code() {
            Some(0 | 1) => stdout
                .lines()
                .rev()
                .find(|l| l.contains(" passed, "))
                .unwrap_or("")
                .to_string(),
            _ => {
                return Err(Error::Internal(format!(
                    "matrix: `check` for {} exited with {}: {}",
                    c.label,
                    result.status,
                    String::from_utf8_lossy(&result.stderr).trim()
                )))
            }
        };
        outcomes.push(Outcome {
            label: c.label.clone(),
            records: Some(dir),
            summary,
        });
    }
    Ok(outcomes)
}

//! Setup shared by the areas of this binary: running `reprodiff`, private copies of fixtures/
//! and of tiny models, editing JSON goldens, reading check records, insta's settings.
use reprodiff::torch::DeviceSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

/// The CPU device, as the torch seam spells it.
pub const CPU: DeviceSpec = DeviceSpec::Cpu;

/// A tensor's raw bytes, for bit-for-bit comparisons.
pub fn bits(t: &Tensor) -> Vec<u8> {
    reprodiff::torch::tensor_bytes(t).unwrap()
}

/// `reprodiff ARGS` (with `--fixtures FIXTURES` when given), outside CI.
pub fn reprodiff(args: &[&str], fixtures: Option<&Path>) -> Output {
    reprodiff_with_env(args, fixtures, &[])
}

/// `reprodiff ARGS` with extra environment variables (e.g. another CPU class's).
pub fn reprodiff_with_env(args: &[&str], fixtures: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprodiff"));
    cmd.args(args)
        .env_remove("CI")
        .env_remove("REPRODIFF_FIXTURES")
        .envs(env.iter().copied());
    if let Some(f) = fixtures {
        cmd.arg("--fixtures").arg(f);
    }
    cmd.output().unwrap()
}

/// `reprodiff ARGS` on this host's own kernels: the variables that choose CPU kernels (which a
/// run of the whole suite under another class sets) removed.
pub fn reprodiff_native(args: &[&str], fixtures: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprodiff"));
    cmd.args(args)
        .env_remove("CI")
        .env_remove("REPRODIFF_FIXTURES");
    for k in reprodiff::env::KERNEL_ENV {
        cmd.env_remove(k);
    }
    if let Some(f) = fixtures {
        cmd.arg("--fixtures").arg(f);
    }
    cmd.output().unwrap()
}

/// A command's stdout followed by its stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private copy of fixtures/ for tests that change goldens.
pub fn fixtures_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixtures");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        &root,
    );
    (tmp, root)
}

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Applies `edit` to the JSON file at `path` and writes it back, pretty-printed.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The record of `scenario` in `<out>/records.jsonl`.
pub fn read_record(out: &Path, scenario: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no record of {scenario} in {text}"))
}

/// The rng scenario that the command-line, bless and golden tests change and check.
pub const ONE_NAME: &str = "randn/cpu-generator/seed1/17";
/// A `--filter` that selects ONE_NAME alone.
pub const ONE: &str = "^randn/cpu-generator/seed1/17$";

/// Removes one scenario's entry from the copied rng golden file.
pub fn drop_golden(fixtures: &Path, scenario: &str) {
    edit_json(&fixtures.join("golden/rng.json"), |v| {
        v["scenarios"].as_object_mut().unwrap().remove(scenario);
    });
}

/// insta's settings: snapshots in the repository's snapshots/, named without the module.
pub fn snapshot_settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    s.set_prepend_module_to_snapshot(false);
    s
}

/// A private copy of the tiny-ddim-a pipeline folder.
pub fn tiny_model_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-ddim-a");
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/tiny-ddim-a"),
        &dir,
    );
    (tmp, dir)
}

/// Applies `edit` to the UNet's tensors in the pipeline folder `model` and writes them back.
pub fn rewrite_weights(model: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = model.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

/// The line `check` prints for one scenario.
pub fn check_line<'a>(t: &'a str, scenario: &str) -> &'a str {
    t.lines()
        .find(|l| l.contains(scenario))
        .unwrap_or_else(|| panic!("no line for {scenario} in: {t}"))
}

/// Makes the golden expectation `e` (a JSON object of a golden under `golden_dir`) hold `t` as
/// its output, consistently: a new array file, its SHA-256 and its metrics. A golden edited so is
/// one the store accepts, and differs from what the run gives (a golden whose hash disagrees
/// with its array is refused before anything runs).
pub fn plant_expectation(golden_dir: &Path, e: &mut serde_json::Value, t: &Tensor) {
    let sha = reprodiff::torch::tensor_sha256(t).unwrap();
    let old = e["array"].as_str().unwrap().to_string();
    let folder = Path::new(&old).parent().unwrap();
    let rel = folder.join(format!("planted.{}.npy", &sha[..12]));
    t.write_npy(golden_dir.join(&rel)).unwrap();
    let values = reprodiff::torch::tensor_to_f64(t).unwrap();
    e["array"] = serde_json::json!(rel.to_str().unwrap());
    e["sha256"] = serde_json::json!(sha);
    e["metrics"] = serde_json::json!({
        "sum_abs": reprodiff::metrics::sum_abs(&values),
        "max_abs": reprodiff::metrics::max_abs(&values),
        "mean_abs": reprodiff::metrics::mean_abs(&values),
    });
}

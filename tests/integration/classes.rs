//! Verdicts across CPU classes: bit for bit on the host's own class; on a class without an
//! expectation, the truth rule (and the per-step truth for chaotic outputs), with planted defects
//! that must fail, skips decided before running, and the rules' edge cases.
use crate::common::*;
use reprodiff::error::exit;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Derived weights are the same whatever ATen capability the deriving process dispatches to:
/// under `default` (whose scalar randn gives other draws) the derivation runs in a child under
/// avx2. Found when a cache made under `default` moved every sd15-arch output.
#[test]
fn derived_weights_do_not_depend_on_the_aten_capability() {
    let tmp = tempfile::tempdir().unwrap();
    let derive = |name: &str, env: &[(&str, &str)]| {
        let out = tmp.path().join(name);
        let args = [
            "derive-weights",
            "--arch",
            "ddpm-cifar10-32",
            "--out",
            out.to_str().unwrap(),
        ];
        let run = reprodiff_with_env(&args, None, env);
        assert_eq!(run.status.code(), Some(exit::OK), "{}", text(&run));
        std::fs::read(out.join("unet/diffusion_pytorch_model.safetensors")).unwrap()
    };
    let native = derive("native", &[]);
    let scalar = derive("default", &[("ATEN_CPU_CAPABILITY", "default")]);
    assert!(
        native == scalar,
        "the weights derived under ATen `default` differ"
    );
}

/// Applies `edit` to every tensor of tiny-ddim-a's UNet in a fixtures copy.
fn edit_tiny_a(fixtures: &Path, edit: impl Fn(&str, &mut Tensor)) {
    rewrite_weights(&fixtures.join("models/tiny-ddim-a"), |ts| {
        for (name, t) in ts.iter_mut() {
            edit(name, t);
        }
    });
}

/// On the host's own class the comparison is bit for bit: nudging one bias of tiny-ddim-a by
/// one ulp fails. (bless first gives this host's class an expectation when it has none; that
/// one is then checked bit for bit beside the truth rule against the nearest oracle class.)
#[test]
fn a_one_ulp_change_of_one_weight_fails_on_the_hosts_own_class() {
    let (_tmp, fixtures) = fixtures_copy();
    let check = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps5$",
    ];
    let out = reprodiff(
        &[
            "bless",
            "--suite",
            "ddim-tiny",
            "--filter",
            "^tiny-ddim-a/steps5$",
        ],
        Some(&fixtures),
    );
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let out = reprodiff(&check, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5");
    let own_oracle_class = line.contains("same class (oracle)");
    // Without an oracle expectation of its own, the host is judged against the nearest class
    // (identical where that class's bits are the same, else within tolerance) and bit for bit
    // against the expectation bless just made.
    assert!(
        (line.starts_with("identical") && own_oracle_class)
            || ((line.starts_with("within tolerance") || line.starts_with("identical"))
                && t.contains("bits (blessed)")),
        "{t}"
    );
    edit_tiny_a(&fixtures, |name, t| {
        if name == "conv_out.bias" {
            let v = t.double_value(&[0]) as f32;
            let _ = t.narrow(0, 0, 1).fill_(f64::from(v.next_up()));
        }
    });
    let out = reprodiff(&check, Some(&fixtures));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5");
    assert!(line.starts_with("drifted"), "{line}");
    assert!(
        if own_oracle_class {
            line.contains("same class") && line.contains("bits")
        } else {
            t.contains("bits (blessed)") && t.contains("drifted")
        },
        "{t}"
    );
}

/// A CPU class nobody recorded (ATen `default`, oneDNN held to SSE4.1) passes ddim-tiny by the
/// calibrated cross-class rule and names the class it compared with; the same class fails
/// once tiny-ddim-a's weights are scaled by 1.01.
#[test]
fn an_unrecorded_cpu_class_passes_by_the_truth_rule_and_scaled_weights_fail() {
    let foreign = [
        ("ATEN_CPU_CAPABILITY", "default"),
        ("ONEDNN_MAX_CPU_ISA", "SSE41"),
    ];
    let (_tmp, fixtures) = fixtures_copy();
    let check = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps(2|5|10)$",
    ];
    let out = reprodiff_with_env(&check, Some(&fixtures), &foreign);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("host class: cpu/x86_64/"), "{t}");
    assert!(t.contains("/aten=default/onednn=sse41/"), "{t}");
    for steps in [2, 5, 10] {
        let line = check_line(&t, &format!("tiny-ddim-a/steps{steps} "));
        assert!(
            line.starts_with("within tolerance") && line.contains("nearest class cpu/"),
            "{line}"
        );
    }
    edit_tiny_a(&fixtures, |_, t| {
        let scaled = &*t * 1.01;
        t.copy_(&scaled);
    });
    let out = reprodiff_with_env(&check, Some(&fixtures), &foreign);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, "tiny-ddim-a/steps5 ");
    assert!(
        line.starts_with("drifted") && line.contains("rmse_truth"),
        "{line}"
    );
}

/// A CPU class nobody recorded: ATen's scalar code and oneDNN at SSE4.1.
const FOREIGN: [(&str, &str); 2] = [
    ("ATEN_CPU_CAPABILITY", "default"),
    ("ONEDNN_MAX_CPU_ISA", "SSE41"),
];

/// Edits one ddim-tiny scenario's golden entry in a fixtures copy.
fn edit_ddim_tiny(fixtures: &Path, scenario: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    edit_json(&fixtures.join("golden/ddim-tiny.json"), |v| {
        edit(&mut v["scenarios"][scenario])
    });
}

/// Appends `line` to the `[[scenario]]` named `name` in ddim-tiny.toml of a fixtures copy.
fn add_to_ddim_tiny_scenario(fixtures: &Path, name: &str, line: &str) {
    let path = fixtures.join("suites/ddim-tiny.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = format!("name = \"{name}\"\n");
    assert!(text.contains(&head), "no scenario {name}");
    std::fs::write(&path, text.replacen(&head, &format!("{head}{line}\n"), 1)).unwrap();
}

const SENSITIVE: &str = "tiny-ddim-b/steps50";
const SENSITIVE_FILTER: &str = "^tiny-ddim-b/steps50$";

/// On a class without an expectation, a scenario whose sensitivity makes the truth rule
/// powerless is "not comparable": a failure, with the number, never a pass.
#[test]
fn a_powerless_cross_class_comparison_is_not_comparable_and_fails() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, SENSITIVE, |s| {
        s["truth"]["sensitivity"] = 1.0.into();
        // Without the per-step truth nothing else can judge it.
        s["truth"].as_object_mut().unwrap().remove("steps");
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        check_line(&t, SENSITIVE).starts_with("not comparable"),
        "{t}"
    );
    assert!(
        t.contains("a 1-ulp change of the initial noise moves the output"),
        "{t}"
    );
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

/// With its per-step truth, a scenario whose output is too sensitive to compare is judged by
/// its steps: within tolerance as far as they are comparable, said in the line.
#[test]
fn a_chaotic_output_is_judged_by_its_per_step_truth() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, SENSITIVE, |s| {
        s["truth"]["sensitivity"] = 1.0.into()
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, SENSITIVE);
    assert!(
        line.starts_with("within tolerance") && line.contains("rmse_truth_steps"),
        "{t}"
    );
    assert!(
        t.contains("within tolerance through step 50 of 50 by the per-step truth"),
        "{t}"
    );
    assert!(t.contains("1 passed, 0 failed"), "{t}");
}

const CIFAR_CHAOTIC: &str = "eta0.0/cpu-generator-seed0/steps50";

/// The proof of the step rule on a chaotic scenario: on a foreign class (ATen default, oneDNN
/// SSE4.1), ddim-cifar10-arch's eta-0 50-step image cannot be compared at the output (one ulp
/// of noise moves it by a third of its RMS), but its trajectory can be through its comparable
/// steps. The plain run passes, saying how far it looked; the UNet's weights scaled by 1.01 or
/// by 1.0001 (a planted defect) fail, naming the first step beyond the rule.
#[test]
fn a_planted_defect_in_a_chaotic_scenario_fails_at_the_first_step_beyond_the_rule() {
    let args = [
        "check",
        "--suite",
        "ddim-cifar10-arch",
        "--filter",
        "^eta0\\.0/cpu-generator-seed0/steps50$",
    ];
    let out = reprodiff_with_env(&args, None, &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, CIFAR_CHAOTIC);
    assert!(line.starts_with("within tolerance"), "{t}");
    assert!(line.contains("rmse_truth_steps"), "{t}");
    assert!(t.contains("chaotic after"), "{t}");
    let named = regex::Regex::new(
        r"beyond the step rule at step (\d+) of 50: .* comparable through step (\d+)",
    )
    .unwrap();
    let mut first_steps = Vec::new();
    for factor in ["1.01", "1.0001"] {
        let mut env = FOREIGN.to_vec();
        env.push((reprodiff::models::params::PLANT_SCALE_ENV, factor));
        let out = reprodiff_with_env(&args, None, &env);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(exit::FAILED), "x{factor}: {t}");
        assert!(
            check_line(&t, CIFAR_CHAOTIC).starts_with("drifted"),
            "x{factor}: {t}"
        );
        let found = named
            .captures(&t)
            .unwrap_or_else(|| panic!("x{factor}: {t}"));
        let (step, comparable) = (
            found[1].parse::<usize>().unwrap(),
            found[2].parse::<usize>().unwrap(),
        );
        // The defect is caught inside the part of the trajectory the rule can see.
        assert!(
            (1..=comparable).contains(&step),
            "x{factor}: step {step} of {comparable} comparable: {t}"
        );
        first_steps.push(step);
    }
    // A hundred times the defect is seen no later than the small one.
    assert!(first_steps[0] <= first_steps[1], "{first_steps:?}");
}

/// #26's last-step defect: `set_alpha_to_one = false` changes the last DDIM step only (its
/// alpha_prev becomes alphas_cumprod[0] instead of 1) and moves the 50-step image by L_inf
/// about 1e-2. On the foreign class the output is too chaotic to compare and the step rule sees
/// steps 1 to 13 only; the local pass computes step 50 from the truth's own input to it, and
/// the local rule fails it by name.
#[test]
fn a_last_step_defect_fails_a_chaotic_scenario_naming_step_50() {
    let (_tmp, fixtures) = fixtures_copy();
    let path = fixtures.join("suites/ddim-cifar10-arch.toml");
    let suite = std::fs::read_to_string(&path).unwrap();
    let run =
        "run = { kind = \"ddim\", model = \"derived:ddpm-cifar10-32\", steps = 50, eta = 0.0, \
               generator = { type = \"single\", seed = 0 } }";
    assert!(suite.contains(run), "the scenario's run line changed");
    let planted = run.replace(
        "seed = 0 } }",
        "seed = 0 }, scheduler = { set_alpha_to_one = false } }",
    );
    std::fs::write(&path, suite.replacen(run, &planted, 1)).unwrap();
    let args = [
        "check",
        "--suite",
        "ddim-cifar10-arch",
        "--filter",
        "^eta0\\.0/cpu-generator-seed0/steps50$",
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, CIFAR_CHAOTIC).starts_with("drifted"), "{t}");
    assert!(t.contains("beyond the local rule at step 50 of 50"), "{t}");
}

/// #26's last-column defect: ten times a step's noise response added to the latent's last
/// column only, at that one step (`REPRODIFF_TEST_PLANT_STEP`), fails sd-tiny's f16 latent on a
/// class without its expectation, naming the step; the plain run passes by the local rule.
#[test]
fn a_last_column_defect_fails_an_f16_scenario_naming_its_step() {
    let scenario = "tiny-sd-a/f16/latent/steps2";
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/sd-tiny.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let response = golden["scenarios"][scenario]["truth"]["steps"]["noise_response"][0]
        .as_f64()
        .expect("the scenario's per-step truth");
    let args = [
        "check",
        "--suite",
        "sd-tiny",
        "--filter",
        "^tiny-sd-a/f16/latent/steps2$",
    ];
    let out = reprodiff_with_env(&args, None, &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(t.contains("within the local rule at every step"), "{t}");
    let plant = format!("1:{}", 10.0 * response);
    let mut env = FOREIGN.to_vec();
    env.push((reprodiff::pipelines::trace::PLANT_STEP_ENV, &plant));
    let out = reprodiff_with_env(&args, None, &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, scenario).starts_with("drifted"), "{t}");
    assert!(t.contains("beyond the local rule at step 1 of 2"), "{t}");
}

/// The proof in reduced precision: sd-tiny's f16 latent, on a class without an f16
/// expectation, is judged in its own precision by its per-step truth: the plain run passes, and
/// the weights scaled by 1.01 (a planted defect) fail at the first step. (What f16 cannot see,
/// measured on an Intel Xeon: weights x1.001 give 0.964 noise responses against the plain
/// run's 0.945, guidance 7.4 for 7.5 gives 1.017; bf16 does not see x1.01, 0.922 against 0.861.)
#[test]
fn a_planted_defect_in_an_f16_scenario_fails_on_a_class_without_its_expectation() {
    let scenario = "tiny-sd-a/f16/latent/steps2";
    let args = [
        "check",
        "--suite",
        "sd-tiny",
        "--filter",
        "^tiny-sd-a/f16/latent/steps2$",
    ];
    let out = reprodiff_with_env(&args, None, &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(
        check_line(&t, scenario).starts_with("within tolerance"),
        "{t}"
    );
    assert!(t.contains("by the per-step truth"), "{t}");
    let mut env = FOREIGN.to_vec();
    env.push((reprodiff::models::params::PLANT_SCALE_ENV, "1.01"));
    let out = reprodiff_with_env(&args, None, &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(check_line(&t, scenario).starts_with("drifted"), "{t}");
    assert!(t.contains("beyond the step rule at step 1 of 2"), "{t}");
}

/// The suite's `own_class_only`, with its reason, makes such a scenario a skip decided before
/// it runs on another class (said with the reason, never a pass), and leaves it checked bit for
/// bit on its own class.
#[test]
fn an_own_class_only_scenario_is_skipped_before_running_on_another_class() {
    let (_tmp, fixtures) = fixtures_copy();
    add_to_ddim_tiny_scenario(
        &fixtures,
        SENSITIVE,
        "own_class_only = \"planted by a test: too sensitive\"",
    );
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        SENSITIVE_FILTER,
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    // Skipped with its reason; a check of nothing else compared nothing, which is no pass.
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("nothing was compared"), "{t}");
    assert!(
        t.contains("1 not run: checked only on its own class (planted by a test: too sensitive)"),
        "{t}"
    );
    assert!(t.contains("0 passed, 0 failed, 1 skipped"), "{t}");
    let out = reprodiff_native(&args, Some(&fixtures));
    let t = text(&out);
    if t.contains("1 not run: checked only on its own class") {
        // A host of a class nobody recorded: its own class has no expectation either, so
        // nothing was compared.
        assert!(t.contains("has none"), "{t}");
        assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    } else {
        assert_eq!(out.status.code(), Some(exit::OK), "{t}");
        assert!(check_line(&t, SENSITIVE).starts_with("identical"), "{t}");
    }
}

/// Without a cross-class rule a class with no expectation is "no expectation": a skip decided
/// before running, outside CI; a failure in CI.
#[test]
fn no_expectation_is_a_skip_outside_ci_and_a_failure_in_it() {
    let (_tmp, fixtures) = fixtures_copy();
    let path = fixtures.join("suites/ddim-tiny.toml");
    let text_ = std::fs::read_to_string(&path).unwrap();
    let without = text_.replace(
        "cross_class = { rule = \"truth\", k = 2.0",
        "# cross_class = { rule = \"truth\", k = 2.0",
    );
    assert_ne!(without, text_, "the suite's cross_class line moved");
    std::fs::write(&path, without).unwrap();
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
    ];
    let mut env = FOREIGN.to_vec();
    env.push(("CI", ""));
    let out = reprodiff_with_env(&args, Some(&fixtures), &env);
    let t = text(&out);
    // A skip outside CI, but a check of nothing else compared nothing.
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        t.contains("1 no expectation: no expectation for this host's class"),
        "{t}"
    );
    assert!(t.contains("0 passed, 0 failed, 1 skipped"), "{t}");
    assert!(t.contains("nothing was compared"), "{t}");
    env.pop();
    env.push(("CI", "true"));
    let out = reprodiff_with_env(&args, Some(&fixtures), &env);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

/// The truth rule without a recorded truth cannot judge: failed, naming the oracle command.
#[test]
fn a_missing_truth_fails_across_classes() {
    let (_tmp, fixtures) = fixtures_copy();
    edit_ddim_tiny(&fixtures, "tiny-ddim-a/steps2", |s| {
        s.as_object_mut().unwrap().remove("truth");
    });
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    assert!(
        check_line(&t, "tiny-ddim-a/steps2").starts_with("failed"),
        "{t}"
    );
    assert!(t.contains("no float64 truth recorded"), "{t}");
}

/// An output with exactly the nearest class's bits is "identical" across classes, and says the
/// rule was not needed; one ulp of difference in one stored hash is not.
#[test]
fn the_nearest_class_identical_shortcut_needs_the_very_bits() {
    let (_tmp, fixtures) = fixtures_copy();
    let out_dir = tempfile::tempdir().unwrap();
    let scenario = "tiny-ddim-a/steps2";
    let mut args = vec![
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        "^tiny-ddim-a/steps2$",
        "--verbose",
        "--save-outputs",
    ];
    let records = out_dir.path().to_str().unwrap();
    args.extend(["--out", records]);
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", text(&out));
    let r = read_record(out_dir.path(), scenario);
    assert_eq!(r["compared_with"]["match"], "nearest-class", "{r}");
    let nearest = r["compared_with"]["class"].clone();
    let output = tch::Tensor::read_npy(out_dir.path().join(r["array"].as_str().unwrap())).unwrap();
    edit_ddim_tiny(&fixtures, scenario, |s| {
        for e in s["expectations"].as_array_mut().unwrap() {
            if e["class"] == nearest {
                plant_expectation(&fixtures.join("golden"), e, &output);
            }
        }
    });
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    assert!(check_line(&t, scenario).starts_with("identical"), "{t}");
    assert!(t.contains("the cross-class rule was not needed"), "{t}");
}

/// A rerun difference (run 1 minus run 2) is zero on every class: across classes it is
/// compared exactly, not by the truth rule, so a stored non-zero difference fails there.
#[test]
fn a_rerun_difference_is_compared_exactly_on_every_class() {
    let (_tmp, fixtures) = fixtures_copy();
    let scenario = "tiny-ddim-b/rerun-difference/per-sample-generators/eta1/steps5";
    let filter = format!("^{}$", regex::escape(scenario));
    let args = [
        "check",
        "--suite",
        "ddim-tiny",
        "--filter",
        &filter,
        "--verbose",
    ];
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::OK), "{t}");
    let line = check_line(&t, scenario);
    assert!(
        line.starts_with("identical") && line.contains("nearest class"),
        "{t}"
    );
    assert!(
        t.contains("a rerun difference is exactly zero on every class"),
        "{t}"
    );
    edit_ddim_tiny(&fixtures, scenario, |s| {
        for e in s["expectations"].as_array_mut().unwrap() {
            let golden = fixtures.join("golden");
            let zero = tch::Tensor::read_npy(golden.join(e["array"].as_str().unwrap())).unwrap();
            plant_expectation(&golden, e, &(zero + 1e-9));
        }
    });
    let out = reprodiff_with_env(&args, Some(&fixtures), &FOREIGN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(exit::FAILED), "{t}");
    let line = check_line(&t, scenario);
    // Compared exactly: sum_abs drifts, and the cosine distance of a zero difference to a
    // non-zero one is NaN, which fails (a non-finite metric is never a pass).
    assert!(
        line.starts_with("failed") && !line.contains("rmse_truth"),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.trim_start().starts_with("sum_abs") && l.ends_with("drifted")),
        "{t}"
    );
}

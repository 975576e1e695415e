//! The committed fixtures checked against each other, without running a pipeline: other hosts'
//! records select and match their class's expectation, and the suites' rules, `own_class_only`
//! marks, calibration and every expectation's producer agree with the goldens.
use std::path::PathBuf;
use tch::Tensor;

/// The genuine AVX2 host (fixtures/records/avx2-amd-epyc/README.md): replaying what reprodiff
/// output there, every scenario it ran selects its own class's expectation and is bit-identical
/// to it, so both README commands pass on such a host. This Intel host cannot emulate that
/// class (ATen, oneDNN and MKL held to AVX2 give other bits), hence the replay.
#[test]
fn avx2_host_records_are_identical_to_their_class_expectations() {
    use reprodiff::env::{EnvClass, Fingerprint};
    use reprodiff::harness::store::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    let records = root.join("records/avx2-amd-epyc/check-records");
    let avx2: EnvClass = "cpu/x86_64/amd/aten=avx2/onednn=avx2/mkl=auto/threads=2/libtorch=2.13.0"
        .parse()
        .unwrap();
    let (mut compared, mut in_avx2_class) = (0, 0);
    for suite_dir in std::fs::read_dir(&records).unwrap() {
        let suite_dir = suite_dir.unwrap().path();
        let suite = suite_dir.file_name().unwrap().to_str().unwrap().to_string();
        let golden = store.load(&suite).unwrap().unwrap();
        for file in std::fs::read_dir(&suite_dir).unwrap() {
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file.unwrap().path()).unwrap())
                    .unwrap();
            let Some(sha) = r["output"]["sha256"].as_str() else {
                continue; // not run there (CUDA, weights)
            };
            let fp: Fingerprint = serde_json::from_value(r["environment"].clone()).unwrap();
            let device = serde_json::from_value(r["spec"]["device"].clone()).unwrap();
            let class = fp.class(device);
            let name = r["scenario"].as_str().unwrap();
            let e = golden.scenarios[name]
                .expectation(&class)
                .unwrap_or_else(|| panic!("{suite}/{name}: no expectation for {class}"));
            assert_eq!(e.sha256.as_deref(), Some(sha), "{suite}/{name} ({class})");
            compared += 1;
            in_avx2_class += usize::from(class == avx2);
        }
    }
    // 138 scenarios ran there; one (rng's randn/cpu-capability-default) in a child process
    // under the `default` capability, which is another class.
    assert_eq!((compared, in_avx2_class), (138, 137));
}

/// The AMD EPYC AVX-512 host and the AMD AVX2 class emulated on it (fixtures/records/
/// avx512-amd-epyc/, avx2-amd-epyc-emulated/): every record `reprodiff check` wrote there for
/// sd-tiny and sd15-arch selects its own class's expectation (merged from that host's oracle)
/// and has its bits, so such a host says "identical" to all 39; the records say so too.
#[test]
fn amd_host_records_are_identical_to_their_class_expectations() {
    use reprodiff::env::Fingerprint;
    use reprodiff::harness::store::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    for host in ["avx512-amd-epyc", "avx2-amd-epyc-emulated"] {
        let path = root
            .join("records")
            .join(host)
            .join("check-records/records.jsonl");
        let mut compared = 0;
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let (suite, name) = (
                r["suite"].as_str().unwrap(),
                r["scenario"].as_str().unwrap(),
            );
            let golden = store.load(suite).unwrap().unwrap();
            let fp: Fingerprint = serde_json::from_value(r["environment"].clone()).unwrap();
            let device = serde_json::from_value(r["spec"]["device"].clone()).unwrap();
            let class = fp.class(device);
            let e = golden.scenarios[name]
                .expectation(&class)
                .unwrap_or_else(|| panic!("{host}: {suite}/{name}: no expectation for {class}"));
            assert_eq!(e.provenance.producer, "oracle", "{host}: {suite}/{name}");
            assert_eq!(
                e.sha256.as_deref(),
                r["output"]["sha256"].as_str(),
                "{host}: {name}"
            );
            assert_eq!(r["verdict"], "identical", "{host}: {suite}/{name}");
            compared += 1;
        }
        assert_eq!(compared, 39, "{host}");
    }
}

/// A rerun-difference scenario's zeros only say that two runs agree; a pipeline that ignored
/// its input would pass it too. So every such scenario of a suite with goldens has a sibling
/// that runs the same thing once and is compared with its expectation (under any determinism
/// setting: ddim-cuda's default-determinism rerun claims repeatability, its first run is pinned
/// under full determinism).
#[test]
fn every_rerun_difference_has_its_first_run_pinned() {
    use reprodiff::harness::suite::workload::Workload;
    let fixtures = reprodiff::harness::suite::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let suites = fixtures.select(&Default::default()).unwrap();
    let mut twice = 0;
    for suite in &suites {
        for s in &suite.scenarios {
            if !s.run.is_rerun_difference() {
                continue;
            }
            twice += 1;
            let mut once = s.run.clone();
            match &mut once {
                Workload::Ddim(w) => w.twice = false,
                Workload::Sd(w) => w.twice = false,
                other => panic!(
                    "{}: a rerun difference of an unknown kind: {other:?}",
                    s.name
                ),
            }
            assert!(
                suite
                    .scenarios
                    .iter()
                    .any(|o| o.run == once && o.device == s.device),
                "{}/{}: no scenario pins its first run",
                suite.name,
                s.name
            );
        }
    }
    assert!(twice >= 4, "found {twice} rerun-difference scenarios");
}

/// `own_class_only` is data with a guard: it marks exactly the scenarios under the truth rule
/// that nothing can judge across classes, those whose recorded sensitivity makes the output's
/// comparison powerless, whose per-step truth keeps no step comparable (or which have none,
/// or no step_ulps for their dtype) and which the local rule cannot judge (no local inputs in
/// the truth, no class's local figures, no local_ulps for their dtype). So it can neither hide
/// a comparable scenario nor be missing from one that cannot be compared; and the chaotic
/// scenarios the steps judge are named.
#[test]
fn own_class_only_marks_exactly_the_scenarios_nothing_can_judge_across_classes() {
    use reprodiff::harness::compare::POWERLESS_SENSITIVITY;
    use reprodiff::harness::suite::CrossClass;
    let fixtures = reprodiff::harness::suite::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let (mut marked, mut by_steps, mut judged) = (Vec::new(), Vec::new(), 0);
    for suite in fixtures.select(&Default::default()).unwrap() {
        let Some(golden) = store.load(&suite.name).unwrap() else {
            continue;
        };
        for s in &suite.scenarios {
            let name = format!("{}/{}", suite.name, s.name);
            let g = golden.scenarios.get(&s.name);
            let truth = g.and_then(|g| g.truth.as_ref());
            let (
                Some(g),
                Some(truth),
                Some(CrossClass::Truth {
                    step_ulps,
                    local_ulps,
                    ..
                }),
            ) = (g, truth, s.cross_class)
            else {
                assert!(
                    s.own_class_only.is_none(),
                    "{name}: own_class_only without a truth rule and truth"
                );
                continue;
            };
            let (relative, steps, local) = what_judges(
                &store,
                g,
                truth,
                step_ulps.get(g.dtype),
                local_ulps.get(g.dtype),
            );
            let powerless = relative > POWERLESS_SENSITIVITY;
            let nothing_judges = powerless && steps == 0 && !local;
            assert_eq!(
                nothing_judges,
                s.own_class_only.is_some(),
                "{name}: sensitivity is {:.3}% of the truth's RMS (limit {}%), {steps} comparable \
                 steps under a step rule, own_class_only = {:?}",
                100.0 * relative,
                100.0 * POWERLESS_SENSITIVITY,
                s.own_class_only
            );
            judged += 1;
            if nothing_judges {
                marked.push(name);
            } else if powerless {
                by_steps.push(format!(
                    "{name}: {steps} of {} steps, {}",
                    truth.steps.as_ref().map_or(0, |st| st.noise_response.len()),
                    if local {
                        "every step locally"
                    } else {
                        "no local rule"
                    }
                ));
            }
        }
    }
    assert!(judged > 100, "{judged} scenarios with a truth");
    assert_eq!(marked, Vec::<String>::new(), "own_class_only");
    assert_eq!(
        by_steps,
        [
            "ddim-cifar10-arch/eta0.0/cpu-generator-seed0/steps50: 13 of 50 steps, every step \
             locally",
            "sd-tiny/tiny-sd-a/bf16/latent/steps2: 2 of 2 steps, every step locally",
            "sd-tiny/tiny-sd-a/f16/latent/steps2: 2 of 2 steps, every step locally",
        ],
        "judged by their steps"
    );
}

/// What can judge a scenario across classes: its recorded sensitivity relative to the truth's
/// RMS, its comparable steps under a step rule (`step_ulps` for its dtype), and whether the
/// local rule judges it (the truth holds the local inputs, a class its figures, and the suite
/// gives `local_ulps` for the dtype).
fn what_judges(
    store: &reprodiff::harness::store::GoldenStore,
    g: &reprodiff::harness::store::GoldenScenario,
    truth: &reprodiff::harness::store::Truth,
    step_ulps: Option<f64>,
    local_ulps: Option<f64>,
) -> (f64, usize, bool) {
    use reprodiff::harness::compare::{comparable_steps, relative_sensitivity};
    let (values, _) = store.read_array(&truth.array).unwrap();
    let relative = relative_sensitivity(truth.sensitivity, &values);
    let steps = match (&truth.steps, step_ulps) {
        (Some(st), Some(_)) => {
            let (v, _) = store.read_array(&st.array).unwrap();
            comparable_steps(&v, &st.noise_response, g.dtype)
        }
        _ => 0,
    };
    let local = truth.steps.as_ref().is_some_and(|st| st.local.is_some())
        && g.expectations.iter().any(|e| e.local.is_some())
        && local_ulps.is_some();
    (relative, steps, local)
}

/// Every truth rule keeps the calibration policy, from diffusers' recorded classes alone: each
/// native suite's rule and each scenario override that differs from it has noise_ulps,
/// step_ulps and local_ulps at least what every recorded class (or pair of classes) needs and at
/// most twice that (`reprodiff calibrate` prints the same figures). A portable suite's rules are
/// the native suites' whose scenarios they mirror (a portable run is held to what another CPU
/// class is held to): each must be one that keeps the policy on its native suite, and must
/// cover what the portable suite's own diffusers classes need.
#[test]
fn every_truth_rule_is_calibrated_from_the_recorded_classes() {
    let fixtures = reprodiff::harness::suite::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let suites = fixtures.select(&Default::default()).unwrap();
    let judged = reprodiff::harness::golden::calibrate::judge(&suites, &fixtures.store()).unwrap();
    let (mut native, mut portable) = (Vec::new(), Vec::new());
    for j in &judged {
        assert!(j.ok, "{}", j.sentence());
        let suite = j.need.suite.split(' ').next().unwrap().to_string();
        if j.portable {
            portable.push(suite);
        } else {
            assert!(j.need.classes.len() >= 3, "{}", j.sentence());
            native.push(suite);
        }
    }
    native.dedup();
    portable.dedup();
    assert_eq!(
        native,
        ["ddim-cifar10-arch", "ddim-tiny", "sd-tiny", "sd15-arch"]
    );
    assert_eq!(portable, ["ddim-portable", "sd-portable"]);
}

/// The verdicts of the committed records, recomputed from their arrays by today's rule (not
/// re-rendered from stored verdicts): each recorded class's oracle output, judged as a run of a
/// class with no expectation of its own against the classes that remain, passes wherever the
/// rule can judge it, and only the chaotic scenarios are left unjudged (they are judged by
/// their per-step truth, and the oracle records no trace of its outputs).
#[test]
fn each_recorded_class_passes_when_judged_by_the_others() {
    use reprodiff::harness::compare::{compare, Verdict};
    let fixtures = reprodiff::harness::suite::Fixtures::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    );
    let store = fixtures.store();
    let mut tally: std::collections::BTreeMap<Verdict, usize> = Default::default();
    for suite in fixtures.select(&Default::default()).unwrap() {
        if !["ddim-tiny", "ddim-cifar10-arch", "sd-tiny", "sd15-arch"]
            .contains(&suite.name.as_str())
        {
            continue;
        }
        let golden = store.load(&suite.name).unwrap().unwrap();
        for s in &suite.scenarios {
            let g = &golden.scenarios[&s.name];
            for e in &g.expectations {
                let mut others = g.clone();
                others.expectations.retain(|x| x.class != e.class);
                if others.expectations.is_empty() {
                    continue;
                }
                // The oracle's outputs carry no per-step trace: the output's rule alone.
                let mut chaotic = false;
                if let Some(t) = others.truth.as_mut() {
                    t.steps = None;
                    let (v, _) = store.read_array(&t.array).unwrap();
                    chaotic = reprodiff::harness::compare::relative_sensitivity(t.sensitivity, &v)
                        > reprodiff::harness::compare::POWERLESS_SENSITIVITY;
                }
                let path = store.dir.join(e.array.as_ref().unwrap());
                let t = Tensor::read_npy(&path).unwrap().to_kind(g.dtype.kind());
                let mut obs = reprodiff::harness::run::observe::describe(t, None, 0.0).unwrap();
                let id = e.provenance.environment.as_ref().unwrap();
                obs.environment = golden.environments[id].clone();
                assert_eq!(obs.environment.class(s.device), e.class, "{}", s.name);
                let r = compare(&suite.name, s, &obs, Some(&others), &store);
                let where_ = format!("{}/{} as {}: {:?}", suite.name, s.name, e.class, r.notes);
                if chaotic && !s.run.is_rerun_difference() {
                    // Not comparable, unless its bits are another class's.
                    assert!(
                        matches!(r.verdict, Verdict::NotComparable | Verdict::Identical),
                        "{} {where_}",
                        r.verdict
                    );
                } else {
                    assert!(r.verdict.passed(), "{} {where_}", r.verdict);
                }
                *tally.entry(r.verdict).or_default() += 1;
            }
        }
    }
    let judged: usize = tally.values().sum();
    assert!(judged > 300, "{tally:?}");
}

/// Who made each committed expectation: the oracle (diffusers / PyTorch) for every suite but
/// ddim-docs, whose values are the seed document's published numbers. A `reprodiff bless` or a
/// hand edit of a committed golden shows up here.
#[test]
fn every_committed_expectation_names_its_producer() {
    use reprodiff::harness::store::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    let suites = reprodiff::harness::suite::Fixtures::new(&root)
        .select(&Default::default())
        .unwrap();
    let mut seen = 0;
    for suite in &suites {
        let Some(golden) = store.load(&suite.name).unwrap() else {
            // Only a suite of real hub weights that cannot be downloaded here (sd15-docs) may
            // ship without goldens: the oracle records them where the weights are.
            assert!(
                suite
                    .scenarios
                    .iter()
                    .all(|s| s.run.model().is_some_and(|m| m.starts_with("hub:"))),
                "{} has no golden file",
                suite.name
            );
            continue;
        };
        let want = if suite.name == "ddim-docs" {
            "published"
        } else {
            "oracle"
        };
        for (name, s) in &golden.scenarios {
            assert!(!s.expectations.is_empty(), "{}/{name}", suite.name);
            // A portable scenario has its portable class's expectation, which only bless makes
            // (diffusers has no portable kernels); its others are the oracle's.
            let spec = suite.scenarios.iter().find(|x| &x.name == name);
            let portable =
                spec.is_some_and(|x| x.kernels == reprodiff::portable::Kernels::Portable);
            assert_eq!(
                s.expectations
                    .iter()
                    .any(|e| matches!(e.class, reprodiff::env::EnvClass::Portable { .. })),
                portable,
                "{}/{name}: a portable expectation if and only if the scenario is portable",
                suite.name
            );
            for e in &s.expectations {
                let p = &e.provenance;
                let (want, command) = match e.class {
                    reprodiff::env::EnvClass::Portable { .. } => (
                        "reprodiff",
                        format!("reprodiff bless --suite {} ", suite.name),
                    ),
                    _ if want == "oracle" => (want, "ci/oracle/run.sh ".to_string()),
                    _ => (want, "ci/oracle/run.sh --published".to_string()),
                };
                assert_eq!(p.producer, want, "{}/{name} ({})", suite.name, e.class);
                assert!(
                    p.command.starts_with(&command),
                    "{}/{name}: {}",
                    suite.name,
                    p.command
                );
                seen += 1;
            }
            if let Some(t) = &s.truth {
                assert_eq!(
                    t.provenance.producer, "oracle",
                    "{}/{name} truth",
                    suite.name
                );
            }
        }
    }
    assert!(seen > 400, "{seen} expectations");
}

/// Every array a committed golden names hashes to its recorded SHA-256 (expectations in their
/// dtype, truths and step truths in float64, published arrays by `array_sha256`), and every
/// expectation's stored sum_abs, max_abs and mean_abs is what its own array gives, to the bit:
/// the nearest-class "identical" shortcut and the metric checks trust both.
#[test]
fn every_committed_golden_array_hashes_to_its_sha256_and_metrics() {
    use reprodiff::harness::store::GoldenStore;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let store = GoldenStore::new(root.join("golden"));
    let (mut arrays, mut metrics) = (0, 0);
    for suite in reprodiff::harness::suite::Suite::load_dir(&root.join("suites")).unwrap() {
        let Some(golden) = store.load(&suite.name).unwrap() else {
            continue;
        };
        store
            .verify(&golden, golden.scenarios.keys().map(String::as_str))
            .unwrap_or_else(|e| panic!("{e}"));
        for (name, s) in &golden.scenarios {
            for e in &s.expectations {
                let Some(rel) = &e.array else { continue };
                arrays += 1;
                let (values, _) = store.read_array(rel).unwrap();
                for (key, f) in [
                    ("sum_abs", reprodiff::metrics::sum_abs as fn(&[f64]) -> f64),
                    ("max_abs", reprodiff::metrics::max_abs),
                    ("mean_abs", reprodiff::metrics::mean_abs),
                ] {
                    if let Some(want) = e.metrics.get(key) {
                        metrics += 1;
                        assert_eq!(
                            f(&values).to_bits(),
                            want.to_bits(),
                            "{}/{name} [{}] {key}",
                            suite.name,
                            e.class
                        );
                    }
                }
            }
        }
    }
    assert!(
        arrays > 300 && metrics > 900,
        "{arrays} arrays, {metrics} metrics"
    );
}

//! The determinism switches: the full preset is diffusers' enable_full_determinism, settings
//! read back as applied, and a scenario inherits nothing from the one before.
use reprodiff::torch::{CpuCapability, Determinism, Preset};

#[test]
fn full_determinism_preset_is_diffusers_enable_full_determinism_and_reads_back() {
    let full = Determinism::preset(Preset::Full);
    full.apply().unwrap();
    let now = Determinism::in_force().unwrap();
    assert!(now.deterministic_algorithms && now.cudnn_deterministic);
    assert!(!now.cudnn_benchmark && !now.allow_tf32_cublas);
    assert_eq!(now.cublas_workspace_config.as_deref(), Some(":16:8"));
    assert!(now.cuda_launch_blocking);
    // enable_full_determinism leaves cuDNN TF32 alone.
    assert!(now.allow_tf32_cudnn);
}

#[test]
fn threads_setting_is_applied() {
    let det = Determinism {
        threads: Some(1),
        ..Determinism::torch_defaults()
    };
    det.apply().unwrap();
    assert_eq!(Determinism::in_force().unwrap().threads, Some(1));
}

/// `check` runs many scenarios in one process: one that names no thread count or no full
/// determinism must not inherit them from the scenario before it (nextest, one process per
/// test, would give other bits).
#[test]
fn a_scenario_inherits_nothing_from_the_one_before() {
    let default_threads = tch::get_num_threads() as usize;
    let first = Determinism {
        threads: Some(default_threads + 1),
        ..Determinism::full()
    };
    first.apply().unwrap();
    assert_eq!(
        Determinism::in_force().unwrap().threads,
        Some(default_threads + 1)
    );
    Determinism::torch_defaults().apply().unwrap();
    let now = Determinism::in_force().unwrap();
    assert_eq!(now.threads, Some(default_threads));
    assert_eq!(now.cublas_workspace_config, None);
    assert!(!now.cuda_launch_blocking && !now.deterministic_algorithms);
}

#[test]
fn another_cpu_capability_needs_a_child_process() {
    let now = reprodiff::torch::cpu_capability().unwrap();
    let other = if now == "default" {
        CpuCapability::Avx2
    } else {
        CpuCapability::Default
    };
    let det = Determinism {
        cpu_capability: Some(other),
        ..Determinism::torch_defaults()
    };
    let err = det.apply().unwrap_err();
    assert!(err.to_string().contains("child process"), "{err}");
    assert!("avx9".parse::<CpuCapability>().is_err());
    assert!("paranoid".parse::<Preset>().is_err());
}

//! `env`: the environment fingerprint, as text or as the JSON every record and golden carries.
use crate::env::Fingerprint;
use crate::error::{exit, Result};

/// `env [--json]`.
pub(crate) fn env(json: bool) -> Result<i32> {
    let fp = Fingerprint::current()?;
    if json {
        let mut value = serde_json::to_value(&fp).expect("serialises");
        value["class"] = fp.class(Default::default()).to_string().into();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
    } else {
        print_env(&fp);
    }
    Ok(exit::OK)
}

fn print_env(fp: &Fingerprint) {
    let v = &fp.versions;
    println!(
        "reprodiff {} · tch {} · libtorch {} ({})",
        v.reprodiff.as_deref().unwrap_or("?"),
        v.tch.as_deref().unwrap_or("?"),
        v.libtorch,
        v.torch_build.as_deref().unwrap_or("?")
    );
    println!(
        "os        {} {}{}",
        fp.os.name,
        fp.os.arch,
        fp.os
            .libc
            .as_deref()
            .map_or(String::new(), |l| format!(", {l}"))
    );
    println!("cpu       {} ({} threads)", fp.cpu.model, fp.cpu.threads);
    println!("isa       {}", fp.cpu.isa.join(" "));
    println!("dispatch  {}", fp.cpu.capability);
    if !fp.cpu.kernel_env.is_empty() {
        let vars: Vec<String> = fp
            .cpu
            .kernel_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("kernels   {}", vars.join(" "));
    }
    println!("class     {}", fp.class(Default::default()));
    if fp.cuda.available {
        println!(
            "cuda      {} · cuDNN {} · {}",
            fp.cuda.runtime.as_deref().unwrap_or("?"),
            fp.cuda.cudnn.map_or("-".into(), |v| v.to_string()),
            fp.cuda.devices.join(", ")
        );
    } else {
        println!("cuda      not available");
    }
    let d = &fp.determinism;
    println!(
        "determinism  algorithms={} warn_only={} cudnn.deterministic={} cudnn.benchmark={} tf32(cublas)={} tf32(cudnn)={} CUBLAS_WORKSPACE_CONFIG={}",
        d.deterministic_algorithms,
        d.warn_only,
        d.cudnn_deterministic,
        d.cudnn_benchmark,
        d.allow_tf32_cublas,
        d.allow_tf32_cudnn,
        d.cublas_workspace_config.as_deref().unwrap_or("unset")
    );
}

//! What a run record says of reprodiff's own one-off run (`reprodiff run ... --trace DIR`)
//! besides its arrays: the pipeline, the model and the call, as python/reprodiff-record says
//! them of diffusers' DDIMPipeline and StableDiffusionPipeline, so that `reprodiff diff` holds
//! the port to diffusers step by step.
use crate::error::{Error, Result};
use crate::harness::run_record::{ModelInfo, PipelineInfo, SchedulerInfo};
use crate::harness::suite::workload::Workload;
use crate::harness::suite::Scenario;
use crate::models::params::weights_sha256;
use crate::pipelines::ddim::workload::DdimWorkload;
use crate::pipelines::stable_diffusion::workload::SdWorkload;
use crate::torch::{DType, GeneratorSpec};
use serde_json::{Map, Value};

/// A run's pipeline, model and call, as its run record says them.
pub type Info = (PipelineInfo, ModelInfo, Map<String, Value>);

/// The pipeline, model and call of `scenario`'s run.
pub fn info(scenario: &Scenario) -> Result<Info> {
    let device = scenario.device.to_string();
    match &scenario.run {
        Workload::Ddim(w) => ddim(w, device),
        Workload::Sd(w) => sd(w, device),
        _ => Err(Error::InvalidArgument(
            "--trace: only `run ddim` and `run sd` write a run record".into(),
        )),
    }
}

fn ddim(w: &DdimWorkload, device: String) -> Result<(PipelineInfo, ModelInfo, Map<String, Value>)> {
    let folder = crate::loading::resolve(&w.model, None)?;
    let text = match &folder.scheduler_config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
        None => "{}".into(),
    };
    // As `DDIMScheduler.from_config(folder config, **overrides)` keeps it: the folder's keys
    // (a DDPM config's `variance_type` too), every DDIM parameter's value on top.
    let file = match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let config = crate::schedulers::SchedulerClass::Ddim
        .resolved_config(&file, &w.scheduler)
        .map_err(Error::InvalidArgument)?;
    let weights = folder.unet.join(crate::loading::WEIGHTS);
    let model = ModelInfo {
        source: Some(w.model.clone()),
        weights_sha256: [("unet".to_string(), weights_sha256(&weights, w.dtype)?)].into(),
    };
    let pipeline = pipeline("DDIMPipeline", device, w.dtype, "DDIMScheduler", config);
    let call = object(serde_json::json!({
        "batch_size": w.batch,
        "num_inference_steps": w.steps,
        "eta": w.eta,
        "use_clipped_model_output": w.use_clipped_model_output,
        "output_type": w.output_type,
        "generator": generator_json(&w.generator)?,
    }));
    Ok((pipeline, model, call))
}

fn sd(w: &SdWorkload, device: String) -> Result<(PipelineInfo, ModelInfo, Map<String, Value>)> {
    let dir = crate::loading::resolve_dir(&w.model, None)?;
    let (own, file) = crate::pipelines::stable_diffusion::scheduler_config(&dir)?;
    let class = w.scheduler_class.or(own).ok_or_else(|| {
        Error::invalid_file(
            dir.join("scheduler/scheduler_config.json"),
            "a scheduler class reprodiff does not run",
        )
    })?;
    let config = class
        .resolved_config(&file, &w.scheduler)
        .map_err(Error::InvalidArgument)?;
    let hash = |part: &str, file: &str| -> Result<(String, String)> {
        Ok((
            part.into(),
            weights_sha256(&dir.join(part).join(file), w.dtype)?,
        ))
    };
    let model = ModelInfo {
        source: Some(w.model.clone()),
        weights_sha256: [
            hash("text_encoder", "model.safetensors")?,
            hash("unet", crate::loading::WEIGHTS)?,
            hash("vae", crate::loading::WEIGHTS)?,
        ]
        .into(),
    };
    let pipeline = pipeline(
        "StableDiffusionPipeline",
        device,
        w.dtype,
        class.class_name(),
        config,
    );
    let mut call = object(serde_json::json!({
        "prompt": w.prompt,
        "guidance_scale": w.guidance_scale,
        "num_inference_steps": w.steps,
        "eta": w.eta,
        "num_images_per_prompt": w.num_images_per_prompt,
        "output_type": w.output_type,
        "generator": generator_json(&w.generator)?,
    }));
    // Keys the call leaves to diffusers' defaults are not arguments (the recorder writes the
    // keyword arguments it was given).
    let optional = [
        ("negative_prompt", serde_json::to_value(&w.negative_prompt)),
        ("height", serde_json::to_value(w.height)),
        ("width", serde_json::to_value(w.width)),
        ("clip_skip", serde_json::to_value(w.clip_skip)),
    ];
    for (key, value) in optional {
        match value.expect("serialises") {
            Value::Null => {}
            v => {
                call.insert(key.into(), v);
            }
        }
    }
    Ok((pipeline, model, call))
}

fn pipeline(
    class: &str,
    device: String,
    dtype: DType,
    scheduler: &str,
    config: Map<String, Value>,
) -> PipelineInfo {
    PipelineInfo {
        class: class.into(),
        device,
        dtype,
        scheduler: SchedulerInfo {
            class: scheduler.into(),
            config,
        },
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

/// A generator argument as python/reprodiff-record writes it: `{device, seed, state_sha256}`
/// per generator (a list for a list), null for torch's global generator.
fn generator_json(spec: &GeneratorSpec) -> Result<Value> {
    use crate::torch::Generators;
    let one = |g: &crate::torch::Generator| -> Result<Value> {
        let state = crate::torch::tensor_sha256(&g.get_state()?)?;
        Ok(serde_json::json!({
            "device": g.device().to_string(),
            "seed": g.initial_seed(),
            "state_sha256": state,
        }))
    };
    Ok(match spec.build()?.0 {
        Generators::One(g) => one(&g)?,
        Generators::List(gs) => Value::Array(gs.iter().map(one).collect::<Result<Vec<_>>>()?),
        _ => Value::Null,
    })
}

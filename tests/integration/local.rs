//! The local pass (#26 A): a run teacher-forced by the truth changes nothing but its inputs,
//! leaves the scenario's own run alone, and judges every step and the output where the
//! trajectory is chaotic.
use crate::common::*;
use reprodiff::harness::run::local::LocalInputsAt;
use reprodiff::harness::run::observe::Runner;
use reprodiff::harness::suite::{Fixtures, Selection};
use reprodiff::pipelines::ddim::{DdimCall, DdimPipeline};
use reprodiff::pipelines::{run_forced, Forcing, OutputType};
use reprodiff::torch::{randn_tensor, DType, DeviceSpec, GeneratorSpec};
use std::path::PathBuf;
use tch::{Kind, Tensor};

fn fixtures() -> Fixtures {
    Fixtures::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

fn tiny_ddim() -> DdimPipeline {
    let folder =
        reprodiff::loading::resolve("tiny-ddim-a", Some(&fixtures().root.join("models"))).unwrap();
    DdimPipeline::load(&folder, DType::F32, DeviceSpec::Cpu, &Default::default()).unwrap()
}

/// Forced with its own trajectory and its own draws (the initial latent and each step's eta
/// noise, replayed from a fresh generator), a DDIM run makes its own latent at every step and
/// its own output, bit for bit; forced with other latents, every step moves.
#[test]
fn a_run_forced_with_its_own_trajectory_gives_its_own_bits() {
    let args = DdimCall {
        num_inference_steps: 4,
        eta: 1.0,
        output_type: OutputType::Latent,
        ..Default::default()
    };
    let spec = GeneratorSpec::Single {
        seed: 0,
        device: DeviceSpec::Cpu,
    };
    let mut pipe = tiny_ddim();
    pipe.trace = Some(Vec::new());
    let own = pipe.call(&args, &mut spec.build().unwrap().0).unwrap();
    let trace = pipe.trace.take().unwrap();
    let (mut gens, _) = spec.build().unwrap();
    let mut draw = || {
        randn_tensor(&own.size(), &mut gens, DeviceSpec::Cpu, DType::F32)
            .unwrap()
            .to_kind(Kind::Double)
    };
    let initial = draw();
    let noise = Tensor::stack(&(0..4).map(|_| draw()).collect::<Vec<_>>(), 0);
    let values: Vec<f64> = trace.iter().flat_map(|s| s.latent.clone()).collect();
    let latents = Tensor::from_slice(&values).reshape([4, -1]);
    let forcing = |latents: &Tensor| Forcing {
        latents: latents.shallow_clone(),
        initial: initial.shallow_clone(),
        noise: Some(noise.shallow_clone()),
    };
    let forced_run = run_forced(&mut tiny_ddim(), &args, forcing(&latents)).unwrap();
    let (out, forced) = (forced_run.tensor, forced_run.trace.unwrap());
    assert_eq!(bits(&out), bits(&own));
    assert_eq!(forced.len(), trace.len());
    for (a, b) in forced.iter().zip(&trace) {
        assert_eq!(a.latent, b.latent, "step {}", a.step + 1);
    }
    // The forcing acts: other inputs (the truth's latents moved) move every later step.
    let moved = latents.f_mul_scalar(1.001).unwrap();
    let other = run_forced(&mut tiny_ddim(), &args, forcing(&moved))
        .unwrap()
        .trace
        .unwrap();
    for (a, b) in other.iter().zip(&trace).skip(1) {
        assert_ne!(a.latent, b.latent, "step {}", a.step + 1);
    }
}

/// A forced run that draws past the truth's draws, or leaves some, is an error, never a
/// silent draw from a generator.
#[test]
fn a_forced_run_that_consumes_other_draws_than_the_truths_is_an_error() {
    let args = DdimCall {
        num_inference_steps: 2,
        eta: 1.0,
        output_type: OutputType::Latent,
        ..Default::default()
    };
    let shape = [1, 3, 32, 32];
    let latent = Tensor::zeros(shape, (Kind::Double, tch::Device::Cpu));
    let forcing = |noises: i64| Forcing {
        latents: Tensor::zeros([2, 3 * 32 * 32], (Kind::Double, tch::Device::Cpu)),
        initial: latent.shallow_clone(),
        noise: Some(Tensor::zeros(
            [noises, 1, 3, 32, 32],
            (Kind::Double, tch::Device::Cpu),
        )),
    };
    for noises in [1, 3] {
        let e = run_forced(&mut tiny_ddim(), &args, forcing(noises)).unwrap_err();
        assert!(
            e.to_string().contains("draw") || e.to_string().contains("left"),
            "{noises} noises: {e}"
        );
    }
}

/// The local pass runs after the scenario's own run, on a pipeline of its own: the scenario's
/// output is bit for bit what it is without it, and the pass made every step of the truth.
#[test]
fn the_local_pass_changes_no_bit_of_the_run() {
    let fixtures = fixtures();
    let suites = fixtures
        .select(&Selection {
            suites: vec!["ddim-tiny".into()],
            ..Default::default()
        })
        .unwrap();
    let suite = &suites[0];
    let store = fixtures.store();
    let golden = store.load("ddim-tiny").unwrap().unwrap();
    let (scenario, st) = suite
        .scenarios
        .iter()
        .find_map(|s| {
            let st = golden
                .scenarios
                .get(&s.name)?
                .truth
                .as_ref()?
                .steps
                .as_ref()?;
            (st.local.is_some() && st.local.as_ref()?.noise.is_some()).then_some((s, st))
        })
        .expect("a ddim-tiny scenario whose truth holds the local pass's inputs, with eta noise");
    let inputs = LocalInputsAt::of(&store, st).unwrap().unwrap();
    let runner = Runner { exe: None };
    let plain = runner.observe(&suite.path, scenario, None).unwrap();
    let with = runner
        .observe(&suite.path, scenario, Some(&inputs))
        .unwrap();
    assert_eq!(plain.sha256, with.sha256, "{}", scenario.name);
    assert!(plain.local.is_none());
    let local = with.local.expect("the local pass ran");
    assert_eq!(local.steps.len(), st.noise_response.len());
    assert_eq!(local.output.len(), with.values.len());
}

//! Properties of the torch seam's generators: same seed same draws, generators that leave
//! each other and the global one alone, lists and states, threads, and the errors of bad input.
use crate::common::{bits, CPU};
use proptest::prelude::*;
use reprodiff::error::exit;
use reprodiff::torch::{randn_tensor, DType, DeviceSpec, Generator, GeneratorSpec, Generators};
use tch::Tensor;

fn shape_strategy() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(1i64..6, 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn same_seed_gives_identical_draws(seed in any::<u32>(), shape in shape_strategy()) {
        let a = Generator::cpu(seed as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        let b = Generator::cpu(seed as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        prop_assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn drawing_from_one_generator_leaves_others_and_the_global_one_alone(
        seed in any::<u32>(), other in any::<u32>(), shape in shape_strategy()
    ) {
        // Reference: what `other` and the global generator give when nothing else draws.
        let alone = Generator::cpu(other as u64).unwrap().randn(&shape, DType::F32, CPU).unwrap();
        tch::manual_seed(11);
        let global_alone = Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));

        tch::manual_seed(11);
        let mut busy = Generator::cpu(seed as u64).unwrap();
        let mut quiet = Generator::cpu(other as u64).unwrap();
        for _ in 0..3 {
            let _ = busy.randn(&[17], DType::F32, CPU).unwrap();
        }
        let global_after = Tensor::randn(shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu));
        prop_assert_eq!(bits(&quiet.randn(&shape, DType::F32, CPU).unwrap()), bits(&alone));
        prop_assert_eq!(bits(&global_after), bits(&global_alone));
    }

    #[test]
    fn generator_list_equals_samples_drawn_alone(
        seeds in prop::collection::vec(any::<u32>(), 2..5), sample in shape_strategy()
    ) {
        let seeds: Vec<u64> = seeds.into_iter().map(u64::from).collect();
        let mut shape = vec![seeds.len() as i64];
        shape.extend(&sample);
        let (mut gens, _) = GeneratorSpec::PerSample { seeds: seeds.clone(), device: CPU }.build().unwrap();
        let batch = randn_tensor(&shape, &mut gens, CPU, DType::F32).unwrap();
        let mut one = vec![1];
        one.extend(&sample);
        for (i, &s) in seeds.iter().enumerate() {
            let alone = Generator::cpu(s).unwrap().randn(&one, DType::F32, CPU).unwrap();
            prop_assert_eq!(bits(&batch.narrow(0, i as i64, 1)), bits(&alone));
        }
    }

    #[test]
    fn repeated_generator_draws_its_samples_in_sequence(
        seed in any::<u32>(), count in 2usize..5, sample in shape_strategy()
    ) {
        let mut shape = vec![count as i64];
        shape.extend(&sample);
        let (mut gens, _) = GeneratorSpec::Repeated { seed: seed as u64, count, device: CPU }.build().unwrap();
        let batch = randn_tensor(&shape, &mut gens, CPU, DType::F32).unwrap();
        let mut one = vec![1];
        one.extend(&sample);
        let mut g = Generator::cpu(seed as u64).unwrap();
        for i in 0..count {
            let next = g.randn(&one, DType::F32, CPU).unwrap();
            prop_assert_eq!(bits(&batch.narrow(0, i as i64, 1)), bits(&next));
        }
    }

    #[test]
    fn restoring_a_state_replays_the_draws(seed in any::<u32>(), warmup in 0i64..40, shape in shape_strategy()) {
        let mut g = Generator::cpu(seed as u64).unwrap();
        if warmup > 0 {
            let _ = g.randn(&[warmup], DType::F32, CPU).unwrap();
        }
        let state = g.get_state().unwrap();
        let first = g.randn(&shape, DType::F32, CPU).unwrap();
        g.set_state(&state).unwrap();
        prop_assert_eq!(bits(&g.randn(&shape, DType::F32, CPU).unwrap()), bits(&first));
    }
}

#[test]
fn clone_copies_the_state_and_share_aliases_it() {
    let mut g = Generator::cpu(3).unwrap();
    let _ = g.randn(&[5], DType::F32, CPU).unwrap();
    let mut copy = g.clone();
    let mut alias = g.share();
    assert!(alias.shares_state_with(&g));
    assert!(!copy.shares_state_with(&g));
    let from_copy = copy.randn(&[20], DType::F32, CPU).unwrap();
    let from_alias = alias.randn(&[20], DType::F32, CPU).unwrap();
    assert_eq!(
        bits(&from_copy),
        bits(&from_alias),
        "clone starts where g was"
    );
    // The alias advanced g; the copy did not.
    assert_ne!(
        bits(&g.randn(&[20], DType::F32, CPU).unwrap()),
        bits(&from_alias)
    );
    assert_eq!(g.initial_seed(), 3);
    assert_eq!(g.device(), CPU);
}

#[test]
fn manual_seed_resets_a_used_generator() {
    let mut g = Generator::cpu(5).unwrap();
    let first = g.randn(&[7], DType::F32, CPU).unwrap();
    g.manual_seed(5).unwrap();
    assert_eq!(bits(&g.randn(&[7], DType::F32, CPU).unwrap()), bits(&first));
}

#[test]
fn generators_in_concurrent_threads_match_draws_made_alone() {
    let alone: Vec<Vec<u8>> = (0..4)
        .map(|s| {
            bits(
                &Generator::cpu(s)
                    .unwrap()
                    .randn(&[3, 32, 32], DType::F32, CPU)
                    .unwrap(),
            )
        })
        .collect();
    let handles: Vec<_> = (0..4u64)
        .map(|s| {
            std::thread::spawn(move || {
                let mut g = Generator::cpu(s).unwrap();
                let mut last = Vec::new();
                for _ in 0..20 {
                    g.manual_seed(s).unwrap();
                    last = bits(&g.randn(&[3, 32, 32], DType::F32, CPU).unwrap());
                    tch::manual_seed(99); // a neighbour seeding the global generator
                }
                last
            })
        })
        .collect();
    for (s, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), alone[s], "seed {s}");
    }
}

#[test]
fn a_state_of_the_wrong_size_is_an_error_not_a_crash() {
    let mut g = Generator::cpu(0).unwrap();
    let garbage = Tensor::zeros([3], (tch::Kind::Uint8, tch::Device::Cpu));
    let err = g.set_state(&garbage).unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE, "{err}");
}

#[test]
fn a_generator_list_of_the_wrong_length_is_rejected() {
    let (mut gens, _) = GeneratorSpec::PerSample {
        seeds: vec![0, 1, 2],
        device: CPU,
    }
    .build()
    .unwrap();
    let err = randn_tensor(&[2, 3], &mut gens, CPU, DType::F32).unwrap_err();
    assert!(err.to_string().contains("length 3"), "{err}");
    assert_eq!(err.exit_code(), exit::USAGE);
}

/// Without CUDA, asking for it is a clear usage error; with CUDA, the same calls work and a
/// CPU generator's noise moved to the GPU is the CPU draw (diffusers' randn_tensor).
#[test]
fn cuda_generators_and_devices_are_clear_errors_without_cuda_and_work_with_it() {
    let cuda = DeviceSpec::Cuda(0);
    if tch::Cuda::is_available() {
        let mut gpu = Generators::One(Generator::cuda(0, 0).unwrap());
        let t = randn_tensor(&[2], &mut gpu, cuda, DType::F32).unwrap();
        assert_eq!(t.device(), tch::Device::Cuda(0));
        let mut one = Generators::One(Generator::cpu(0).unwrap());
        let moved = randn_tensor(&[17], &mut one, cuda, DType::F32).unwrap();
        let cpu = Generator::cpu(0)
            .unwrap()
            .randn(&[17], DType::F32, CPU)
            .unwrap();
        assert_eq!(bits(&moved.to_device(tch::Device::Cpu)), bits(&cpu));
        return;
    }
    let err = Generator::cuda(0, 0).unwrap_err();
    assert!(err.to_string().contains("CUDA is not available"), "{err}");
    assert_eq!(err.exit_code(), exit::USAGE);
    let err = randn_tensor(&[2], &mut Generators::Global, cuda, DType::F32).unwrap_err();
    assert!(err.to_string().contains("cuda:0"), "{err}");
    let mut one = Generators::One(Generator::cpu(0).unwrap());
    assert!(randn_tensor(&[2], &mut one, cuda, DType::F32).is_err());
}

//! torch's CPU `randn` for float32 as ATen computes it under `ATEN_CPU_CAPABILITY=default`
//! (`normal_fill` and `normal_fill_16`, aten/src/ATen/native/cpu/DistributionTemplates.h), with
//! glibc's float `logf`, `cosf` and `sinf` ported ([`super::libm`]): the same bits from the
//! same generator on every CPU, whatever capability ATen would pick.
//!
//! The uniforms come from the generator itself (`Generator::rand`, one 32-bit mt19937 draw per
//! element, masked to 24 bits and scaled: integer work, machine-independent), consumed exactly as
//! `normal_fill` consumes them: one per element, then, when the size is not a multiple of 16, 16
//! more that replace the last 16 before their block is transformed again
//! ([`crate::torch::Generator::portable_randn`] draws them and calls [`normal_fill`]).
use super::libm::{cosf, logf, sinf};

/// `normal_fill_16` with mean 0 and std 1, in place: for j in 0..8,
/// `radius = sqrt(-2 * logf(1 - u[j]))`, `theta = (float)(2.0 * pi_double * u[j + 8])`,
/// `out[j] = radius * cosf(theta) * 1 + 0`, `out[j + 8] = radius * sinf(theta) * 1 + 0`, all in
/// float but the product that makes theta. (`* 1 + 0` kept: it turns -0 into +0 as ATen's does.)
pub fn normal_fill_16(data: &mut [f32]) {
    debug_assert_eq!(data.len(), 16);
    let (std, mean) = (1.0f32, 0.0f32);
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * logf::<true>(u1)).sqrt();
        let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
        data[j] = radius * cosf::<true>(theta) * std + mean;
        data[j + 8] = radius * sinf::<true>(theta) * std + mean;
    }
}

/// Transforms `n` uniforms (and, for a size that is not a multiple of 16, the 16 redrawn ones)
/// into normals as `normal_fill` does.
pub fn normal_fill(uniforms: &mut [f32], redrawn: Option<&[f32]>) {
    let n = uniforms.len();
    let mut i = 0;
    while i + 16 <= n {
        normal_fill_16(&mut uniforms[i..i + 16]);
        i += 16;
    }
    if let Some(last) = redrawn {
        uniforms[n - 16..].copy_from_slice(last);
        normal_fill_16(&mut uniforms[n - 16..]);
    }
}

#[cfg(test)]
mod tests {
    use crate::harness::suite::workload::{RandomOp, RandomWorkload, Workload};
    use crate::harness::suite::{Fixtures, Selection};
    use crate::torch::{DType, DeviceSpec, Generator, GeneratorSpec};

    /// Portable randn gives, bit for bit, every float32 draw of 16 elements or more that the
    /// oracle recorded with torch under ATEN_CPU_CAPABILITY=default (rng suite, single CPU
    /// generators), whatever capability this process's ATen runs.
    #[test]
    fn portable_randn_is_torchs_default_capability_randn_on_any_cpu() {
        let fixtures =
            Fixtures::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"));
        let store = fixtures.store();
        let suite = fixtures
            .select(&Selection {
                suites: vec!["rng".into()],
                filter: None,
            })
            .unwrap()
            .remove(0);
        let golden = store.load("rng").unwrap().unwrap();
        let mut compared = Vec::new();
        for s in &suite.scenarios {
            let Workload::Random(RandomWorkload {
                op,
                shape,
                dtype,
                generator:
                    GeneratorSpec::Single {
                        seed,
                        device: DeviceSpec::Cpu,
                    },
                skip: None,
                state_roundtrip: false,
                ..
            }) = &s.run
            else {
                continue;
            };
            let n: i64 = shape.iter().product();
            if *op != RandomOp::Randn || *dtype != DType::F32 || n < 16 || s.slice.is_some() {
                continue;
            }
            let Some(e) = golden.scenarios[&s.name]
                .expectations
                .iter()
                .find(|e| e.class.to_string().contains("/aten=default/"))
            else {
                continue;
            };
            let (want, _) = store.read_array(e.array.as_ref().unwrap()).unwrap();
            let mut gen = Generator::cpu(*seed).unwrap();
            let got: Vec<f32> = Vec::try_from(gen.portable_randn(shape).unwrap().view(-1)).unwrap();
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(g, w)| f64::from(**g).to_bits() != w.to_bits())
                .count();
            assert_eq!(got.len(), want.len(), "{}", s.name);
            assert_eq!(differ, 0, "{}: {differ} of {n} draws differ", s.name);
            compared.push(s.name.clone());
        }
        assert!(compared.len() >= 3, "{compared:?}");
    }

    #[test]
    fn fewer_than_16_elements_are_refused() {
        let mut gen = Generator::cpu(0).unwrap();
        let e = gen.portable_randn(&[4]).unwrap_err().to_string();
        assert!(e.contains("16 elements or more"), "{e}");
    }
}

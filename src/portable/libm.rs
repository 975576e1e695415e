//! glibc's float `logf`, `sinf` and `cosf` (since glibc 2.28 the code of ARM's
//! optimized-routines, `math/logf.c`, `math/sinf.c`, `math/cosf.c`, `math/sincosf.h` and their
//! data tables), ported operation for operation, for the inputs the noise needs: `logf` of a
//! positive finite float, `sinf` and `cosf` of |x| < 120.
//!
//! They compute in double and round once to float. On x86-64 glibc picks, at run time, a copy
//! built with `-mfma` where the CPU has FMA (every CPU seen here), and GCC then contracts each
//! `a * b + c` into one fused multiply-add: `FMA = true` is that copy (the one whose results
//! torch's `default` draws carry), `FMA = false` the baseline one. `f64::mul_add` is correctly
//! rounded on every machine (in hardware or in software), so both are machine-independent. On
//! the noise's whole domain the two copies give the same bits (test
//! `the_ports_are_glibcs_logf_sinf_cosf_on_the_noises_whole_domain`: 0 of 2^24 inputs differ
//! from glibc 2.36 for either, for each function); the noise uses the FMA copy.
//!
//! Constants are the bit patterns of the C sources' hexadecimal literals (written beside them).

#[inline(always)]
fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `__logf_data.tab`: (invc, logc) per subinterval.
const LOGF_TAB: [(u64, u64); 16] = [
    (0x3ff661ec79f8f3be, 0xbfd57bf7808caade), // 0x1.661ec79f8f3bep+0, -0x1.57bf7808caadep-2
    (0x3ff571ed4aaf883d, 0xbfd2bef0a7c06ddb), // 0x1.571ed4aaf883dp+0, -0x1.2bef0a7c06ddbp-2
    (0x3ff49539f0f010b0, 0xbfd01eae7f513a67), // 0x1.49539f0f010bp+0, -0x1.01eae7f513a67p-2
    (0x3ff3c995b0b80385, 0xbfcb31d8a68224e9), // 0x1.3c995b0b80385p+0, -0x1.b31d8a68224e9p-3
    (0x3ff30d190c8864a5, 0xbfc6574f0ac07758), // 0x1.30d190c8864a5p+0, -0x1.6574f0ac07758p-3
    (0x3ff25e227b0b8ea0, 0xbfc1aa2bc79c8100), // 0x1.25e227b0b8eap+0, -0x1.1aa2bc79c81p-3
    (0x3ff1bb4a4a1a343f, 0xbfba4e76ce8c0e5e), // 0x1.1bb4a4a1a343fp+0, -0x1.a4e76ce8c0e5ep-4
    (0x3ff12358f08ae5ba, 0xbfb1973c5a611ccc), // 0x1.12358f08ae5bap+0, -0x1.1973c5a611cccp-4
    (0x3ff0953f419900a7, 0xbfa252f438e10c1e), // 0x1.0953f419900a7p+0, -0x1.252f438e10c1ep-5
    (0x3ff0000000000000, 0x0000000000000000), // 0x1p+0, 0x0p+0
    (0x3fee608cfd9a47ac, 0x3faaa5aa5df25984), // 0x1.e608cfd9a47acp-1, 0x1.aa5aa5df25984p-5
    (0x3feca4b31f026aa0, 0x3fbc5e53aa362eb4), // 0x1.ca4b31f026aap-1, 0x1.c5e53aa362eb4p-4
    (0x3feb2036576afce6, 0x3fc526e57720db08), // 0x1.b2036576afce6p-1, 0x1.526e57720db08p-3
    (0x3fe9c2d163a1aa2d, 0x3fcbc2860d224770), // 0x1.9c2d163a1aa2dp-1, 0x1.bc2860d22477p-3
    (0x3fe886e6037841ed, 0x3fd1058bc8a07ee1), // 0x1.886e6037841edp-1, 0x1.1058bc8a07ee1p-2
    (0x3fe767dcf5534862, 0x3fd4043057b6ee09), // 0x1.767dcf5534862p-1, 0x1.4043057b6ee09p-2
];
const LN2: f64 = f64::from_bits(0x3fe62e42fefa39ef); // 0x1.62e42fefa39efp-1
const LOGF_A: [f64; 3] = [
    f64::from_bits(0xbfd00ea348b88334), // -0x1.00ea348b88334p-2
    f64::from_bits(0x3fd5575b0be00b6a), // 0x1.5575b0be00b6ap-2
    f64::from_bits(0xbfdffffef20a4123), // -0x1.ffffef20a4123p-2
];
const LOGF_OFF: u32 = 0x3f33_0000;

/// glibc's `logf` for a positive finite `x` (the only inputs the noise has: (0, 1]); NaN for
/// anything else.
pub fn logf<const FMA: bool>(x: f32) -> f32 {
    let mut ix = x.to_bits();
    if ix == 0x3f80_0000 {
        return 0.0;
    }
    if ix.wrapping_sub(0x0080_0000) >= 0x7f80_0000 - 0x0080_0000 {
        if ix.wrapping_mul(2) == 0 || ix & 0x8000_0000 != 0 || ix >= 0x7f80_0000 {
            return f32::NAN;
        }
        // Subnormal: normalise.
        ix = (x * f32::from_bits(0x4b00_0000)).to_bits(); // 0x1p23f
        ix = ix.wrapping_sub(23 << 23);
    }
    let tmp = ix.wrapping_sub(LOGF_OFF);
    let i = ((tmp >> (23 - 4)) % 16) as usize;
    let k = (tmp as i32) >> 23;
    let iz = ix.wrapping_sub(tmp & 0xff80_0000);
    let (invc, logc) = (f64::from_bits(LOGF_TAB[i].0), f64::from_bits(LOGF_TAB[i].1));
    let z = f64::from(f32::from_bits(iz));
    let r = madd::<FMA>(z, invc, -1.0);
    let y0 = madd::<FMA>(f64::from(k), LN2, logc);
    let r2 = r * r;
    let y = madd::<FMA>(LOGF_A[1], r, LOGF_A[2]);
    let y = madd::<FMA>(LOGF_A[0], r2, y);
    let y = madd::<FMA>(y, r2, y0 + r);
    y as f32
}

/// `__sincosf_table[0]` (the cosine polynomial negated in `[1]`).
struct SinCos {
    sign: [f64; 4],
    hpi_inv: f64,
    hpi: f64,
    c: [f64; 5],
    s: [f64; 3],
}

const C: [u64; 5] = [
    0x3ff0000000000000, // 0x1p0
    0xbfdffffffd0c621c, // -0x1.ffffffd0c621cp-2
    0x3fa55553e1068f19, // 0x1.55553e1068f19p-5
    0xbf56c087e89a359d, // -0x1.6c087e89a359dp-10
    0x3ef99343027bf8c3, // 0x1.99343027bf8c3p-16
];
const S: [u64; 3] = [
    0xbfc555545995a603, // -0x1.555545995a603p-3
    0x3f81107605230bc4, // 0x1.1107605230bc4p-7
    0xbf2994eb3774cf24, // -0x1.994eb3774cf24p-13
];

const fn signed(bits: u64, negate: bool) -> f64 {
    let v = f64::from_bits(bits);
    if negate {
        -v
    } else {
        v
    }
}

const fn table(negate_cos: bool) -> SinCos {
    let n = negate_cos;
    SinCos {
        sign: [1.0, -1.0, -1.0, 1.0],
        // Not TOINT_INTRINSICS (x86-64): 2/PI prescaled by 2^24.
        hpi_inv: f64::from_bits(0x41645f306dc9c883), // 0x1.45F306DC9C883p+23
        hpi: f64::from_bits(0x3ff921fb54442d18),     // 0x1.921FB54442D18p0
        c: [
            signed(C[0], n),
            signed(C[1], n),
            signed(C[2], n),
            signed(C[3], n),
            signed(C[4], n),
        ],
        s: [
            f64::from_bits(S[0]),
            f64::from_bits(S[1]),
            f64::from_bits(S[2]),
        ],
    }
}

const TABLE: [SinCos; 2] = [table(false), table(true)];
/// pi/4 as a float (0x1.921FB6p-1f).
const PIO4F: u32 = 0x3f49_0fdb;

fn abstop12(x: f32) -> u32 {
    (x.to_bits() >> 20) & 0x7ff
}

fn sinf_poly<const FMA: bool>(x: f64, x2: f64, p: &SinCos, n: i32) -> f32 {
    if n & 1 == 0 {
        let x3 = x * x2;
        let s1 = madd::<FMA>(x2, p.s[2], p.s[1]);
        let x7 = x3 * x2;
        let s = madd::<FMA>(x3, p.s[0], x);
        madd::<FMA>(x7, s1, s) as f32
    } else {
        let x4 = x2 * x2;
        let c2 = madd::<FMA>(x2, p.c[4], p.c[3]);
        let c1 = madd::<FMA>(x2, p.c[1], p.c[0]);
        let x6 = x4 * x2;
        let c = madd::<FMA>(x4, p.c[2], c1);
        madd::<FMA>(x6, c2, c) as f32
    }
}

fn reduce_fast<const FMA: bool>(x: f64, p: &SinCos) -> (f64, i32) {
    let r = x * p.hpi_inv;
    let n = ((r as i32).wrapping_add(0x80_0000)) >> 24;
    (madd::<FMA>(-f64::from(n), p.hpi, x), n)
}

/// glibc's `sinf` for |y| < 120 (the noise's angles lie in [0, 2 pi)); NaN beyond.
pub fn sinf<const FMA: bool>(y: f32) -> f32 {
    let x = f64::from(y);
    if abstop12(y) < abstop12(f32::from_bits(PIO4F)) {
        if abstop12(y) < abstop12(f32::from_bits(0x3980_0000)) {
            // |y| < 0x1p-12f
            return y;
        }
        return sinf_poly::<FMA>(x, x * x, &TABLE[0], 0);
    }
    if abstop12(y) < abstop12(120.0) {
        let (x, n) = reduce_fast::<FMA>(x, &TABLE[0]);
        let s = TABLE[0].sign[(n & 3) as usize];
        let p = if n & 2 != 0 { &TABLE[1] } else { &TABLE[0] };
        return sinf_poly::<FMA>(x * s, x * x, p, n);
    }
    f32::NAN
}

/// glibc's `cosf` for |y| < 120; NaN beyond.
pub fn cosf<const FMA: bool>(y: f32) -> f32 {
    let x = f64::from(y);
    if abstop12(y) < abstop12(f32::from_bits(PIO4F)) {
        if abstop12(y) < abstop12(f32::from_bits(0x3980_0000)) {
            return 1.0;
        }
        return sinf_poly::<FMA>(x, x * x, &TABLE[0], 1);
    }
    if abstop12(y) < abstop12(120.0) {
        let (x, n) = reduce_fast::<FMA>(x, &TABLE[0]);
        let s = TABLE[0].sign[(n & 3) as usize];
        let p = if n & 2 != 0 { &TABLE[1] } else { &TABLE[0] };
        return sinf_poly::<FMA>(x * s, x * x, p, n ^ 1);
    }
    f32::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        #[link_name = "logf"]
        fn c_logf(x: f32) -> f32;
        #[link_name = "sinf"]
        fn c_sinf(x: f32) -> f32;
        #[link_name = "cosf"]
        fn c_cosf(x: f32) -> f32;
    }

    /// Every input the noise can give each function: `1 - u` and `(float)(2 pi u)` for each of
    /// the 2^24 uniforms `u = k 2^-24`.
    fn every_input(f: impl Fn(f32) -> f32) -> impl Iterator<Item = (f32, f32)> {
        (0u32..1 << 24).map(move |k| {
            let u = k as f32 * f32::from_bits(0x3380_0000); // 2^-24
            let x = f(u);
            (u, x)
        })
    }

    /// On the whole domain of the noise, the ported functions give the C library's bits when
    /// the C library is glibc with its FMA copy (x86-64 with FMA: every CPU seen here). Where
    /// the C library is another, the ports stand alone (the noise goldens test them).
    #[test]
    fn the_ports_are_glibcs_logf_sinf_cosf_on_the_noises_whole_domain() {
        let glibc = cfg!(all(target_env = "gnu", target_arch = "x86_64"))
            && std::arch::is_x86_feature_detected!("fma");
        let mut differ = [0usize; 6];
        for (_, x) in every_input(|u| 1.0 - u) {
            let c = unsafe { c_logf(x) }.to_bits();
            differ[0] += usize::from(logf::<true>(x).to_bits() != c);
            differ[1] += usize::from(logf::<false>(x).to_bits() != c);
        }
        let theta = |u: f32| (2.0 * std::f64::consts::PI * f64::from(u)) as f32;
        for (_, x) in every_input(theta) {
            let (s, c) = unsafe { (c_sinf(x).to_bits(), c_cosf(x).to_bits()) };
            differ[2] += usize::from(sinf::<true>(x).to_bits() != s);
            differ[3] += usize::from(sinf::<false>(x).to_bits() != s);
            differ[4] += usize::from(cosf::<true>(x).to_bits() != c);
            differ[5] += usize::from(cosf::<false>(x).to_bits() != c);
        }
        eprintln!(
            "of 2^24 inputs each, differing from this C library: logf fma {} / plain {}, sinf \
             fma {} / plain {}, cosf fma {} / plain {}",
            differ[0], differ[1], differ[2], differ[3], differ[4], differ[5]
        );
        if glibc {
            assert_eq!([differ[0], differ[2], differ[4]], [0, 0, 0]);
        }
    }

    #[test]
    fn special_inputs() {
        assert_eq!(logf::<true>(1.0).to_bits(), 0);
        assert!(logf::<true>(0.0).is_nan() && logf::<true>(-1.0).is_nan());
        assert_eq!(sinf::<true>(0.0), 0.0);
        assert_eq!(cosf::<true>(0.0), 1.0);
        assert!(sinf::<true>(200.0).is_nan());
    }
}

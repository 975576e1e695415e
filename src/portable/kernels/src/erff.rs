//! The libm crate's `erff` (FreeBSD's s_erff.c) on 16 values at a time, bit for bit: [`erff16`].
//!
//! libm picks one of five formulas by |x|; [`erff16`] has every lane compute the formulas some
//! lane of its block needs, in the same float32 operations and order as libm, and keep its own. Its two
//! `expf` calls go through [`crate::expf::expf16`], libm's `expf` bits.
use crate::expf::expf16;
use crate::Isa;

// libm's constants, as its source writes them.
#[allow(clippy::excessive_precision)]
const ERX: f32 = 8.4506291151e-01;
#[allow(clippy::excessive_precision)]
const EFX8: f32 = 1.0270333290e+00;
#[allow(clippy::excessive_precision)]
const PP: [f32; 5] = [
    1.2837916613e-01,
    -3.2504209876e-01,
    -2.8481749818e-02,
    -5.7702702470e-03,
    -2.3763017452e-05,
];
#[allow(clippy::excessive_precision)]
const QQ: [f32; 5] = [
    3.9791721106e-01,
    6.5022252500e-02,
    5.0813062117e-03,
    1.3249473704e-04,
    -3.9602282413e-06,
];
#[allow(clippy::excessive_precision)]
const PA: [f32; 7] = [
    -2.3621185683e-03,
    4.1485610604e-01,
    -3.7220788002e-01,
    3.1834661961e-01,
    -1.1089469492e-01,
    3.5478305072e-02,
    -2.1663755178e-03,
];
#[allow(clippy::excessive_precision)]
const QA: [f32; 6] = [
    1.0642088205e-01,
    5.4039794207e-01,
    7.1828655899e-02,
    1.2617121637e-01,
    1.3637083583e-02,
    1.1984500103e-02,
];
// erfc on [1.25, 1/0.35) (RA, SA) and [1/0.35, 6) (RB, SB). RB and SB get a top coefficient
// of 0, so that one nesting serves both: `c + s * 0` is `c` for the nonzero c below them.
#[allow(clippy::excessive_precision)]
const RA: [f32; 8] = [
    -9.8649440333e-03,
    -6.9385856390e-01,
    -1.0558626175e+01,
    -6.2375331879e+01,
    -1.6239666748e+02,
    -1.8460508728e+02,
    -8.1287437439e+01,
    -9.8143291473e+00,
];
#[allow(clippy::excessive_precision)]
const SA: [f32; 8] = [
    1.9651271820e+01,
    1.3765776062e+02,
    4.3456588745e+02,
    6.4538726807e+02,
    4.2900814819e+02,
    1.0863500214e+02,
    6.5702495575e+00,
    -6.0424413532e-02,
];
#[allow(clippy::excessive_precision)]
const RB: [f32; 8] = [
    -9.8649431020e-03,
    -7.9928326607e-01,
    -1.7757955551e+01,
    -1.6063638306e+02,
    -6.3756646729e+02,
    -1.0250950928e+03,
    -4.8351919556e+02,
    0.0,
];
#[allow(clippy::excessive_precision)]
const SB: [f32; 8] = [
    3.0338060379e+01,
    3.2579251099e+02,
    1.5367296143e+03,
    3.1998581543e+03,
    2.5530502930e+03,
    4.7452853394e+02,
    -2.2440952301e+01,
    0.0,
];

/// libm's bounds on |x|'s bits: below TINY, `0.125 * (8x + EFX8 x)`; below SMALL, `x + x r/s`;
/// below FIVE_QUARTERS (1.25), erfc's first formula; below SIX, its second (RA below SPLIT, RB
/// above); from SIX on, `1 - 2^-120`; from INF on (NaN, infinities), libm itself.
const TINY: u32 = 0x3180_0000;
const SMALL: u32 = 0x3f58_0000;
const FIVE_QUARTERS: u32 = 0x3fa0_0000;
const SPLIT: u32 = 0x4036_db6d;
const SIX: u32 = 0x40c0_0000;
const INF: u32 = 0x7f80_0000;

type Lanes = [f32; 16];

/// `p[0] + s * (p[1] + s * (... + s * p[N-1]))`, libm's nesting, in each lane; with `alt`,
/// the lanes whose bits are at least [`SPLIT`] take alt's coefficients. Plain loops over the
/// lanes inside the loop over the coefficients, so that the compiler vectorises them.
#[inline(always)]
fn horner<const N: usize>(s: &Lanes, p: [f32; N], alt: Option<([f32; N], &[u32; 16])>) -> Lanes {
    let coef = |i: usize, l: usize| match alt {
        Some((q, ix)) if ix[l] >= SPLIT => q[i],
        _ => p[i],
    };
    let mut acc = [0f32; 16];
    for (l, a) in acc.iter_mut().enumerate() {
        *a = coef(N - 1, l);
    }
    for i in (0..N - 1).rev() {
        for l in 0..16 {
            acc[l] = coef(i, l) + s[l] * acc[l];
        }
    }
    acc
}

/// `1 + s * h` in each lane: libm's denominators, with `h` a [`horner`].
#[inline(always)]
fn one_plus(s: &Lanes, mut h: Lanes) -> Lanes {
    for l in 0..16 {
        h[l] = 1.0 + s[l] * h[l];
    }
    h
}

/// The libm crate's `erff` on 16 values, bit for bit; each lane as libm computes it (the
/// `expf`s through [`expf16`] on `isa`).
///
/// # Safety
/// The CPU runs `isa`.
#[inline(always)]
pub unsafe fn erff16(isa: Isa, x: Lanes) -> Lanes {
    let mut ix = [0u32; 16];
    for l in 0..16 {
        ix[l] = x[l].to_bits() & 0x7fff_ffff;
    }
    if ix.iter().any(|&i| i >= INF) {
        return each(x);
    }
    let mut out = [0f32; 16];
    if ix.iter().any(|&i| i < SMALL) {
        let mut z = [0f32; 16];
        for l in 0..16 {
            z[l] = x[l] * x[l];
        }
        let (r, s) = (horner(&z, PP, None), one_plus(&z, horner(&z, QQ, None)));
        for l in 0..16 {
            let tiny = 0.125 * (8.0 * x[l] + EFX8 * x[l]);
            let small = x[l] + x[l] * (r[l] / s[l]);
            out[l] = if ix[l] < TINY { tiny } else { small };
        }
    }
    let mut tail = [0f32; 16];
    if ix.iter().any(|&i| (SMALL..FIVE_QUARTERS).contains(&i)) {
        let mut s = [0f32; 16];
        for l in 0..16 {
            s[l] = x[l].abs() - 1.0;
        }
        let (p, q) = (horner(&s, PA, None), one_plus(&s, horner(&s, QA, None)));
        for l in 0..16 {
            tail[l] = 1.0 - ERX - p[l] / q[l];
        }
    }
    if ix.iter().any(|&i| (FIVE_QUARTERS..SIX).contains(&i)) {
        far_tail(isa, &ix, &mut tail);
    }
    let one = 1.0 - f32::from_bits(0x0380_0000);
    for l in 0..16 {
        let y = if ix[l] < SIX { 1.0 - tail[l] } else { one };
        // `-y` where x is negative: its sign bit flipped.
        let signed = f32::from_bits(y.to_bits() ^ (x[l].to_bits() & 0x8000_0000));
        out[l] = if ix[l] >= SMALL { signed } else { out[l] };
    }
    out
}

/// erfc(|x|) for the lanes with 1.25 <= |x| < 6 (`ix`, |x|'s bits) into `tail`:
/// `expf(-z * z - 0.5625) * expf((z - x) * (z + x) + r / big_s) / x` with z x's top 12 bits.
///
/// # Safety
/// The CPU runs `isa`.
#[inline(always)]
unsafe fn far_tail(isa: Isa, ix: &[u32; 16], tail: &mut Lanes) {
    let (mut a, mut s) = ([0f32; 16], [0f32; 16]);
    for l in 0..16 {
        a[l] = f32::from_bits(ix[l]);
        s[l] = 1.0 / (a[l] * a[l]);
    }
    let r = horner(&s, RA, Some((RB, ix)));
    let big_s = one_plus(&s, horner(&s, SA, Some((SB, ix))));
    let far = |l: usize| (FIVE_QUARTERS..SIX).contains(&ix[l]);
    let (mut first, mut second) = ([0f32; 16], [0f32; 16]);
    for l in 0..16 {
        let z = f32::from_bits(ix[l] & 0xffff_e000);
        // Other lanes take an argument in expf16's main range, so as not to leave its vectors.
        let (e1, e2) = (-z * z - 0.5625, (z - a[l]) * (z + a[l]) + r[l] / big_s[l]);
        first[l] = if far(l) { e1 } else { -1.0 };
        second[l] = if far(l) { e2 } else { -1.0 };
    }
    let (e1, e2) = (expf16(isa, first), expf16(isa, second));
    for l in 0..16 {
        let t = e1[l] * e2[l] / a[l];
        tail[l] = if far(l) { t } else { tail[l] };
    }
}

/// `libm::erff` of each value: the way out for NaNs and infinities, kept out of line (see
/// [`crate::expf`]'s).
#[cold]
#[inline(never)]
fn each(x: [f32; 16]) -> [f32; 16] {
    x.map(libm::erff)
}

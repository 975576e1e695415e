//! A scenario's `slice`: numpy-style indices and ranges over its output (no steps).
use crate::error::Error;

/// One axis of a numpy-style slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Index(i64),
    Range(Option<i64>, Option<i64>),
}

/// Parses "0, -3:, -3:, -1" (indices and start:stop ranges, no steps).
pub fn parse_slice(text: &str) -> std::result::Result<Vec<Axis>, String> {
    let int = |s: &str| -> std::result::Result<Option<i64>, String> {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|_| format!("'{s}' is not an integer"))
        }
    };
    text.split(',')
        .map(|part| match part.split_once(':') {
            Some((a, b)) => Ok(Axis::Range(int(a)?, int(b)?)),
            None => int(part)?
                .map(Axis::Index)
                .ok_or_else(|| "empty index".to_string()),
        })
        .collect()
}

/// Applies a parsed slice to a tensor.
pub fn apply_slice(t: &tch::Tensor, axes: &[Axis]) -> crate::error::Result<tch::Tensor> {
    let mut out = t.shallow_clone();
    let mut dim = 0i64;
    for axis in axes {
        let size = *out.size().get(dim as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "slice has more axes than the output's {:?}",
                t.size()
            ))
        })?;
        let norm = |i: i64| {
            if i < 0 {
                (i + size).clamp(0, size)
            } else {
                i.min(size)
            }
        };
        match *axis {
            Axis::Index(i) => {
                if i >= size || i < -size {
                    return Err(Error::InvalidArgument(format!(
                        "slice index {i} is out of range for size {size}"
                    )));
                }
                out = out.f_select(dim, if i < 0 { i + size } else { i })?;
            }
            Axis::Range(a, b) => {
                let (a, b) = (norm(a.unwrap_or(0)), norm(b.unwrap_or(size)));
                out = out.f_narrow(dim, a, (b - a).max(0))?;
                dim += 1;
            }
        }
    }
    Ok(out.f_contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_style_slices_select_like_numpy() {
        let t = tch::Tensor::arange(2 * 4 * 4 * 3, (tch::Kind::Float, tch::Device::Cpu))
            .view([2, 4, 4, 3]);
        let axes = parse_slice("0, -3:, -3:, -1").unwrap();
        let s = apply_slice(&t, &axes).unwrap();
        assert_eq!(s.size(), vec![3, 3]);
        // image[0, 1, 1, 2] is the first element: ((0*4 + 1)*4 + 1)*3 + 2 = 17.
        assert_eq!(s.double_value(&[0, 0]), 17.0);
        assert!(parse_slice("0, x:").is_err());
        assert!(apply_slice(&t, &parse_slice("5").unwrap()).is_err());
    }
}

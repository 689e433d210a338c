//! Borrowed views of stored tensors and their exact widening to f32.

use std::fmt;

/// Element types a teacher may be stored in; all widen to f32 exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// One tensor of a [`Checkpoint`](super::Checkpoint), borrowing its little-endian bytes
/// straight from the mapped file.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    /// Canonical name.
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    /// Exactly `numel() * dtype.size()` bytes, row-major.
    bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    /// `bytes` must hold exactly the product of `shape` elements of `dtype`.
    pub(super) fn new(name: &'a str, dtype: DType, shape: &'a [usize], bytes: &'a [u8]) -> Self {
        debug_assert_eq!(bytes.len(), shape.iter().product::<usize>() * dtype.size());
        TensorRef {
            name,
            dtype,
            shape,
            bytes,
        }
    }

    pub fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Converts elements [start, start+out.len()) (row-major) to f32, multiplied by `scale`.
    ///
    /// # Panics
    /// If the range runs past `numel()`.
    pub fn read_f32(&self, start: usize, scale: f32, out: &mut [f32]) {
        let size = self.dtype.size();
        let end = start
            .checked_add(out.len())
            .filter(|&end| end <= self.numel())
            .unwrap_or_else(|| {
                panic!(
                    "{}: elements {start}..{start}+{} out of range (numel {})",
                    self.name,
                    out.len(),
                    self.numel()
                )
            });
        let bytes = &self.bytes[start * size..end * size];
        match self.dtype {
            DType::F32 => widen(bytes, out, scale, f32::from_le_bytes),
            DType::F16 => widen(bytes, out, scale, |b| f16_to_f32(u16::from_le_bytes(b))),
            DType::BF16 => widen(bytes, out, scale, |b| bf16_to_f32(u16::from_le_bytes(b))),
        }
    }

    /// First element that is NaN or infinite, if any (exporter warns naming the tensor).
    pub fn first_non_finite(&self) -> Option<usize> {
        match self.dtype {
            DType::F32 => position::<4>(self.bytes, |b| !f32::from_le_bytes(b).is_finite()),
            // All-ones exponent: infinity or NaN.
            DType::F16 => position::<2>(self.bytes, |b| u16::from_le_bytes(b) & 0x7c00 == 0x7c00),
            DType::BF16 => position::<2>(self.bytes, |b| u16::from_le_bytes(b) & 0x7f80 == 0x7f80),
        }
    }
}

impl fmt::Debug for TensorRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorRef")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// The hot loop: fixed-size chunks let the compiler drop bounds checks and vectorise.
#[inline(always)]
fn widen<const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    scale: f32,
    convert: impl Fn([u8; N]) -> f32,
) {
    let (chunks, _) = bytes.as_chunks::<N>();
    for (o, &chunk) in out.iter_mut().zip(chunks) {
        *o = convert(chunk) * scale;
    }
}

fn position<const N: usize>(bytes: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<usize> {
    bytes
        .as_chunks::<N>()
        .0
        .iter()
        .position(|&chunk| bad(chunk))
}

/// IEEE binary16 to binary32, exact for every input; NaN payloads are kept, as numpy does.
///
/// Branch-free (all three cases computed, one selected) so that `read_f32` vectorises.
pub fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half & 0x8000) << 16;
    let magnitude = u32::from(half & 0x7fff);
    // Normal: rebias the exponent from 15 to 127; the mantissa widens by 13 zero bits.
    let normal = (magnitude << 13) + ((127 - 15) << 23);
    // Infinity or NaN: all-ones exponent, mantissa (the NaN payload) kept.
    let special = (magnitude << 13) | 0x7f80_0000;
    // Zero or subnormal: mantissa · 2^-24, exact in f32 (whose result is normal).
    let subnormal = (magnitude as f32 * f32::from_bits((127 - 24) << 23)).to_bits();
    let bits = if magnitude < 0x0400 {
        subnormal
    } else if magnitude >= 0x7c00 {
        special
    } else {
        normal
    };
    f32::from_bits(sign | bits)
}

/// bfloat16 is the top half of a binary32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent of the bit manipulation: value = (implicit + m/1024) · 2^(e-15), in f64.
    fn f16_by_formula(half: u16) -> f64 {
        let sign = if half & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((half >> 10) & 0x1f);
        let m = f64::from(half & 0x3ff);
        match e {
            0 => sign * m * 2f64.powi(-24),
            0x1f if m == 0.0 => sign * f64::INFINITY,
            0x1f => f64::NAN,
            _ => sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        }
    }

    #[test]
    fn f16_conversion_is_exact_for_all_65536_inputs() {
        for half in 0..=u16::MAX {
            let got = f16_to_f32(half);
            let want = f16_by_formula(half);
            if want.is_nan() {
                assert!(got.is_nan(), "{half:#06x} -> {got}");
                assert_eq!(
                    got.to_bits() & 0x1fff,
                    0,
                    "{half:#06x}: payload lands in the top bits"
                );
                assert_eq!(
                    got.to_bits() >> 13 & 0x3ff,
                    u32::from(half & 0x3ff),
                    "{half:#06x}"
                );
            } else {
                assert_eq!(f64::from(got), want, "{half:#06x}");
                assert_eq!(got.is_sign_negative(), half & 0x8000 != 0, "{half:#06x}");
            }
        }
    }

    #[test]
    fn bf16_conversion_keeps_the_top_half() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(bf16_to_f32(0x0001), f32::from_bits(0x0001_0000));
        assert_eq!(bf16_to_f32(0xff80), f32::NEG_INFINITY);
        assert!(bf16_to_f32(0x7fc1).is_nan());
    }

    /// Runs `f` on a 1-D tensor over `bytes`.
    fn with_tensor<R>(dtype: DType, bytes: &[u8], f: impl FnOnce(TensorRef<'_>) -> R) -> R {
        let shape = [bytes.len() / dtype.size()];
        f(TensorRef::new("t", dtype, &shape, bytes))
    }

    #[test]
    fn read_f32_scales_a_subrange() {
        let values = [1.5f32, -2.0, 0.25, 8.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0.0; 2];
        with_tensor(DType::F32, &bytes, |t| t.read_f32(1, 3.0, &mut out));
        assert_eq!(out, [-6.0, 0.75]);

        let halves: Vec<u8> = [0x3c00u16, 0xc000, 0x0001]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let mut out = [0.0; 3];
        with_tensor(DType::F16, &halves, |t| t.read_f32(0, 0.5, &mut out));
        assert_eq!(out, [0.5, -1.0, 2f32.powi(-25)]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn read_f32_past_the_end_panics() {
        let bytes = [0u8; 8];
        with_tensor(DType::F32, &bytes, |t| t.read_f32(1, 1.0, &mut [0.0; 2]));
    }

    #[test]
    fn first_non_finite_finds_inf_and_nan_in_every_dtype() {
        let f32s: Vec<u8> = [0.0f32, f32::MAX, f32::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            with_tensor(DType::F32, &f32s, |t| t.first_non_finite()),
            Some(2)
        );
        assert_eq!(
            with_tensor(DType::F32, &f32s[..8], |t| t.first_non_finite()),
            None
        );
        let f16s: Vec<u8> = [0x7bffu16, 0x7e00]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            with_tensor(DType::F16, &f16s, |t| t.first_non_finite()),
            Some(1)
        );
        let bf16s: Vec<u8> = [0x7f7fu16, 0x0000, 0xff80]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            with_tensor(DType::BF16, &bf16s, |t| t.first_non_finite()),
            Some(2)
        );
    }
}

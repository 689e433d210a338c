//! Per-tensor activation quantisation: which range a calibrator clips a
//! tensor to, and the scale and zero point that cover it.
//!
//! The arithmetic is ONNX Runtime's `compute_scale_zp` (the range widened to
//! hold 0; int8 symmetric over ±127, uint8 over 0..=255; the scale computed
//! in f64 and stored as f32), so a graph quantised here and one quantised by
//! `quantize_static` from the same range agree to the last bit.

use tailor_calibration::ranges::Range;
use tailor_runtime::manifest::{ActivationCalibrator, ActivationEncoding};

use super::QuantError;

/// How a graph's activations are encoded: the engine that runs it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Symmetric int8, zero point 0: the only form TensorRT takes.
    S8,
    /// Asymmetric uint8: ONNX Runtime's fast CPU path on AVX2 without VNNI
    /// (uint8 activations × int8 weights), and QNN's HTP.
    U8,
}

impl From<ActivationEncoding> for Encoding {
    fn from(e: ActivationEncoding) -> Self {
        match e {
            ActivationEncoding::S8 => Encoding::S8,
            ActivationEncoding::U8 => Encoding::U8,
        }
    }
}

impl From<ActivationCalibrator> for Calibrator {
    fn from(c: ActivationCalibrator) -> Self {
        match c {
            ActivationCalibrator::MinMax => Calibrator::MinMax,
            ActivationCalibrator::Percentile => Calibrator::Percentile,
            ActivationCalibrator::Mse => Calibrator::Mse,
        }
    }
}

impl Encoding {
    /// The integers quantised values take: int8 symmetric leaves out -128
    /// so that ±x quantise to ±q.
    pub fn levels(self) -> (i32, i32) {
        match self {
            Encoding::S8 => (-127, 127),
            Encoding::U8 => (0, 255),
        }
    }
}

/// An affine quantiser `x ≈ scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
    pub encoding: Encoding,
}

impl QParams {
    /// The quantiser covering `[lo, hi]`, widened to hold 0 (so zero, the
    /// padding value, is exact).
    pub fn covering(lo: f32, hi: f32, encoding: Encoding) -> QParams {
        let (lo, hi) = (f64::from(lo.min(0.0)), f64::from(hi.max(0.0)));
        let (qmin, qmax) = encoding.levels();
        let (lo, hi) = match encoding {
            Encoding::S8 => (-lo.abs().max(hi), lo.abs().max(hi)),
            Encoding::U8 => (lo, hi),
        };
        let scale = (hi - lo) / f64::from(qmax - qmin);
        if scale < f64::from(f32::MIN_POSITIVE) {
            // An all-zero tensor: any scale represents it.
            return QParams {
                scale: 1.0,
                zero_point: 0,
                encoding,
            };
        }
        let zero_point = match encoding {
            // (qmin + qmax) / 2, exactly 0.
            Encoding::S8 => 0,
            Encoding::U8 => (f64::from(qmin) - lo / scale).round_ties_even() as i32,
        };
        QParams {
            scale: scale as f32,
            zero_point,
            encoding,
        }
    }

    /// `x` quantised as ONNX's QuantizeLinear does: divided in f32, rounded
    /// half to even, saturated.
    pub fn quantize(&self, x: f32) -> i32 {
        let (qmin, qmax) = self.encoding.levels();
        ((x / self.scale).round_ties_even() as i32 + self.zero_point).clamp(qmin, qmax)
    }

    /// `q` back to a float, as DequantizeLinear does.
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }
}

/// How an activation's clipping range is chosen from calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Calibrator {
    /// The whole observed range: no clipping error, the coarsest steps.
    MinMax,
    /// Clipped at the recorded high percentile of |x| (99.99th): outliers
    /// saturate so the bulk gets finer steps.
    Percentile,
    /// The clip at ±c, c among [`MSE_CANDIDATES`] fractions of the largest
    /// |x|, that minimises the mean squared quantisation error over a
    /// sample of the values.
    Mse,
}

/// Clips the MSE search tries: `k / MSE_CANDIDATES` of the largest |x| for
/// k = 1..=MSE_CANDIDATES.
pub const MSE_CANDIDATES: u32 = 100;

impl Calibrator {
    /// The quantiser for activation `tensor`, observed as `range`; `sample`
    /// holds values drawn from it (signed), which only [`Calibrator::Mse`] reads.
    pub fn qparams(
        self,
        tensor: &str,
        range: &Range,
        sample: Option<&[f32]>,
        encoding: Encoding,
    ) -> Result<QParams, QuantError> {
        Ok(match self {
            Calibrator::MinMax => QParams::covering(range.min, range.max, encoding),
            Calibrator::Percentile => {
                let p = range.abs_percentile;
                QParams::covering(range.min.max(-p), range.max.min(p), encoding)
            }
            Calibrator::Mse => {
                let sample =
                    sample
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| QuantError::NoSample {
                            tensor: tensor.to_owned(),
                        })?;
                mse_optimal(range, sample, encoding)
            }
        })
    }
}

/// The clip of `range` at ±c, for c among [`MSE_CANDIDATES`] fractions of
/// its largest |x| (the percentile calibrator's form), whose quantiser has
/// the least squared error over `sample` (the widest of equal ones).
fn mse_optimal(range: &Range, sample: &[f32], encoding: Encoding) -> QParams {
    let largest = range.min.abs().max(range.max.abs());
    (1..=MSE_CANDIDATES)
        .rev()
        .map(|k| {
            let c = largest * k as f32 / MSE_CANDIDATES as f32;
            let q = QParams::covering(range.min.max(-c), range.max.min(c), encoding);
            let error: f64 = sample
                .iter()
                .map(|&x| f64::from(x - q.dequantize(q.quantize(x))).powi(2))
                .sum();
            (q, error)
        })
        .fold(None, |best: Option<(QParams, f64)>, (q, e)| match best {
            Some((_, b)) if b <= e => best,
            _ => Some((q, e)),
        })
        .map(|(q, _)| q)
        .expect("at least one candidate")
}

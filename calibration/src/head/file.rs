//! Reading a task head trained on the teacher's features.

use std::fs;
use std::path::Path;

use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors};

use super::{Affine, HeadError};
use crate::npz::{self, Float};

/// The tensor names accepted for the weight `[classes, D]` and the bias
/// `[classes]`, in either file format: PyTorch's `nn.Linear` names, or the
/// `W`/`b` of a numpy fit.
const NAMES: [(&str, &str); 2] = [("weight", "bias"), ("W", "b")];

/// Reads a linear head from `path` and checks it takes the teacher's
/// `teacher_width` features.
///
/// `.npz` (`np.savez` or `np.savez_compressed`) and `.safetensors` files
/// are read, f32 or f64, with the weight `[classes, D]` and bias `[classes]`
/// named `weight`/`bias` or `W`/`b`.
pub fn read_head(path: &Path, teacher_width: usize) -> Result<Affine, HeadError> {
    let format = |problem: String| HeadError::Format {
        path: path.to_owned(),
        problem,
    };
    let (weight, bias) = match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => read_npz(path)?,
        Some("safetensors") => read_safetensors(path)?,
        _ => {
            return Err(format(
                "expected a .npz or .safetensors file (by its extension)".into(),
            ))
        }
    };
    if weight.ncols() != teacher_width {
        return Err(HeadError::Width {
            path: path.to_owned(),
            found: weight.ncols(),
            expected: teacher_width,
        });
    }
    let (classes, biases) = (weight.nrows(), bias.len());
    Affine::new(weight, bias).ok_or_else(|| {
        format(if classes == biases {
            "the head holds values that are not finite".into()
        } else {
            format!("the weight has {classes} rows (classes) but the bias {biases} values")
        })
    })
}

fn read_npz(path: &Path) -> Result<(Array2<f64>, Array1<f64>), HeadError> {
    let bytes = fs::read(path).map_err(|source| HeadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let arrays = || {
        let arrays = npz::read(&bytes)?;
        let mut names: Vec<String> = arrays.keys().cloned().collect();
        names.sort_unstable();
        let (w, b) = pick(&names)?;
        let array = |name: &str| format!("array `{name}` ");
        Ok((
            arrays[w].to_floats().map_err(|e| array(w) + &e)?,
            arrays[b].to_floats().map_err(|e| array(b) + &e)?,
        ))
    };
    arrays().map_err(|problem| HeadError::Format {
        path: path.to_owned(),
        problem,
    })
}

fn read_safetensors(path: &Path) -> Result<(Array2<f64>, Array1<f64>), HeadError> {
    let bytes = fs::read(path).map_err(|source| HeadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let format = |problem: String| HeadError::Format {
        path: path.to_owned(),
        problem,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
    let (w, b) = pick(&names).map_err(format)?;
    let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f64>), HeadError> {
        let view = file.tensor(name).map_err(|e| format(e.to_string()))?;
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Float::F32.widen(data),
            Dtype::F64 => Float::F64.widen(data),
            other => {
                return Err(format(format!(
                    "tensor `{name}` is {other:?}; expected F32 or F64"
                )))
            }
        };
        Ok((view.shape().to_vec(), values))
    };
    let (w_shape, w_values) = tensor(w)?;
    let (b_shape, b_values) = tensor(b)?;
    let weight = Array2::from_shape_vec(
        <[usize; 2]>::try_from(w_shape.as_slice()).map_err(|_| {
            format(format!(
                "`{w}` has shape {w_shape:?}; expected [classes, D]"
            ))
        })?,
        w_values,
    )
    .map_err(|e| format(e.to_string()))?;
    let bias = Array1::from_shape_vec(
        <[usize; 1]>::try_from(b_shape.as_slice())
            .map_err(|_| format(format!("`{b}` has shape {b_shape:?}; expected [classes]")))?,
        b_values,
    )
    .map_err(|e| format(e.to_string()))?;
    Ok((weight, bias))
}

/// The first pair of [`NAMES`] present in `names`.
fn pick(names: &[String]) -> Result<(&'static str, &'static str), String> {
    let has = |n: &str| names.iter().any(|m| m == n);
    NAMES
        .into_iter()
        .find(|&(w, b)| has(w) && has(b))
        .ok_or_else(|| {
            format!("expected tensors `weight` and `bias` (or `W` and `b`), found {names:?}")
        })
}

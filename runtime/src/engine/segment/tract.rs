//! Cuts planned and run by tract.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::{Activation, Cut, Value};
use crate::engine::tract::backend;
use crate::engine::EngineError;

/// The cut optimised for an input of `shape`, and its output's shape.
pub(super) fn plan(
    cut: &Cut,
    shape: &[usize],
) -> Result<(Arc<TypedRunnableModel>, Vec<usize>), EngineError> {
    let plan = crate::engine::tract::plan(&cut.model, &cut.graph, shape, None, 1)?;
    let output = plan
        .model()
        .output_fact(0)
        .ok()
        .filter(|f| f.datum_type == f32::datum_type())
        .and_then(|f| f.shape.as_concrete().map(<[usize]>::to_vec))
        .ok_or_else(|| cut.unfixed_output())?;
    Ok((plan, output))
}

/// Runs `state` on `input`; an ONNX Runtime value is copied into a tensor.
pub(super) fn run(
    state: &mut TypedSimpleState,
    graph: &Path,
    input: &Activation,
) -> Result<TValue, EngineError> {
    let input = match &input.0 {
        Value::Tract(tensor) => tensor.clone(),
        #[cfg(feature = "ort")]
        Value::Ort(_) => Tensor::from(input.to_array()).into_tvalue(),
    };
    let mut outputs = state.run(tvec!(input)).map_err(|e| backend(graph, e))?;
    Ok(outputs.remove(0))
}

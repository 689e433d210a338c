//! A calibration-only tract session that also returns a graph's inner
//! activations: the graph's outputs plus every tensor a MatMul, Gemm or
//! Conv reads or writes that depends on the input (weights are constants,
//! ranged at export instead), selected by their ONNX names as extra model
//! outputs before tract optimises, so optimisation keeps them. It costs
//! about three times the interface run (docs/calibration.md), hence opt-in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::{concatenate, s, ArrayD, ArrayView4, Axis, Ix2, Ix3};
use tailor_runtime::engine::tract::{backend, plan_image};
use tailor_runtime::engine::{EngineError, EngineOptions, Graph, Outputs};
use tailor_runtime::interface::OUTPUTS;
use tract_onnx::pb::GraphProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;

use super::GraphRecorder;

/// The operators whose activations an INT8 export quantises.
const OPS: [&str; 3] = ["MatMul", "Gemm", "Conv"];

/// A graph planned by tract for one image, returning its outputs and its
/// inner activations.
pub struct InnerSession {
    graph: PathBuf,
    state: TypedSimpleState,
    /// `[H, W]` of the input.
    image: [usize; 2],
    /// The recorder slots of the inner tensors, in the order of the extra
    /// outputs.
    slots: Vec<usize>,
}

impl InnerSession {
    /// Loads `graph` (a bundle graph whose files were verified) with the
    /// inner tensors as extra outputs, each added to `recorder` by name;
    /// `opts.threads` threads share each product.
    pub fn load(
        graph: &Path,
        opts: &EngineOptions,
        recorder: &mut GraphRecorder,
    ) -> Result<InnerSession, EngineError> {
        let checked = Graph::read(graph)?;
        let names = inner_tensors(checked.body());
        let outputs: Vec<&str> = OUTPUTS
            .iter()
            .copied()
            .chain(names.iter().map(String::as_str))
            .collect();
        let plan = plan_image(&checked, Some(&outputs), opts.threads.unwrap_or(1))?;
        Ok(InnerSession {
            graph: graph.to_owned(),
            state: plan.spawn().map_err(|e| backend(graph, e))?,
            image: checked.image(),
            slots: names.into_iter().map(|n| recorder.add(n)).collect(),
        })
    }

    /// `[H, W]` of the input.
    pub fn image(&self) -> [usize; 2] {
        self.image
    }

    /// Runs the first `rows` images of `pixels` (the rest is padding, not
    /// run): returns their outputs and records the inner tensors into
    /// `recorder`, the one given to [`Self::load`].
    pub fn run(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        rows: usize,
        recorder: &mut GraphRecorder,
    ) -> Result<Outputs, EngineError> {
        let mut run = || -> TractResult<Outputs> {
            let (mut cls, mut patches) = (Vec::new(), Vec::new());
            for i in 0..rows {
                let image = pixels.slice(s![i..i + 1, .., .., ..]);
                let input = Tensor::from(image.as_standard_layout().into_owned());
                let out = self.state.run(tvec!(input.into_tvalue()))?;
                let [c, p, inner @ ..] = &out[..] else {
                    bail!("tract returned {} outputs", out.len());
                };
                cls.push(c.to_plain_array_view::<f32>()?.to_owned());
                patches.push(p.to_plain_array_view::<f32>()?.to_owned());
                for (&slot, value) in self.slots.iter().zip(inner) {
                    recorder.observe(slot, value.to_plain_array_view::<f32>()?);
                }
            }
            let stack = |images: &[ArrayD<f32>]| {
                let views: Vec<_> = images.iter().map(|a| a.view()).collect();
                concatenate(Axis(0), &views)
            };
            Ok(Outputs {
                cls_token: stack(&cls)?.into_dimensionality::<Ix2>()?,
                patch_tokens: stack(&patches)?.into_dimensionality::<Ix3>()?,
                // Only the features are asked for; a task head is not run.
                logits: None,
            })
        };
        run().map_err(|e| backend(&self.graph, e))
    }
}

/// The activations of the graph's MatMul, Gemm and Conv nodes: their inputs
/// and outputs that depend on the graph's input, other than the graph's
/// input and outputs (recorded anyway), each once, in graph order.
pub fn inner_tensors(graph: &GraphProto) -> Vec<String> {
    let initialized: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|name| !initialized.contains(name))
        .collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    // ONNX nodes are in topological order, so one pass finds every tensor
    // computed from the input.
    let mut dynamic = inputs.clone();
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for node in &graph.node {
        if node.input.iter().any(|i| dynamic.contains(i.as_str())) {
            dynamic.extend(node.output.iter().map(String::as_str));
        }
        if !OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        for tensor in node.input.iter().chain(&node.output) {
            let name = tensor.as_str();
            if dynamic.contains(name)
                && !inputs.contains(name)
                && !outputs.contains(name)
                && seen.insert(name)
            {
                names.push(name.to_owned());
            }
        }
    }
    names
}

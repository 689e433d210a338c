//! Teacher tensors as a graph's initializers, and the layers that read them:
//! the half of a transformer family's graph writer every family shares. The
//! family says how it names and cuts a tensor; the bytes stay in the width's
//! weight file.

use super::layers::Linear;
use super::{ExternalData, GraphBuilder, Value};

/// How a family's LayerNorms are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormKind {
    pub eps: f32,
    /// Whether they carry a bias (some checkpoints drop it).
    pub bias: bool,
}

/// One sub-network's view of its teacher's tensors (`P` is the family's
/// name for one): each written as an initializer whose bytes lie in the
/// width's weight file.
pub struct Weights<'a, P> {
    /// A tensor's canonical teacher name (what `locate` takes) and its shape
    /// once cut to the sub-network.
    cut: Box<dyn Fn(P) -> (String, Vec<usize>) + 'a>,
    locate: &'a dyn Fn(&str) -> ExternalData,
    layer_norm: LayerNormKind,
}

impl<'a, P: Copy> Weights<'a, P> {
    pub fn new(
        cut: impl Fn(P) -> (String, Vec<usize>) + 'a,
        locate: &'a dyn Fn(&str) -> ExternalData,
        layer_norm: LayerNormKind,
    ) -> Self {
        Weights {
            cut: Box::new(cut),
            locate,
            layer_norm,
        }
    }

    /// The cut teacher tensor `param`, named `name` in `b`'s graph.
    pub fn weight(&self, b: &mut GraphBuilder, name: &str, param: P) -> Value {
        let (teacher, shape) = (self.cut)(param);
        b.external(name, &shape, (self.locate)(&teacher))
    }

    /// LayerNorm `name` of `x` with the teacher's scale `weight` and, when
    /// the family's LayerNorms carry one, its `bias`.
    pub fn layer_norm(
        &self,
        b: &mut GraphBuilder,
        name: &str,
        x: &Value,
        weight: P,
        bias: P,
    ) -> Value {
        let scale = self.weight(b, &format!("{name}.weight"), weight);
        let bias = self
            .layer_norm
            .bias
            .then(|| self.weight(b, &format!("{name}.bias"), bias));
        b.layer_norm(name, x, &scale, bias.as_ref(), self.layer_norm.eps)
    }

    /// The Linear `name` of teacher tensors `weight` and `bias`.
    pub fn linear(&self, b: &mut GraphBuilder, name: &str, weight: P, bias: Option<P>) -> Linear {
        Linear {
            weight: self.weight(b, &format!("{name}.weight"), weight),
            bias: bias.map(|bias| self.weight(b, &format!("{name}.bias"), bias)),
        }
    }
}

/// A family's graph writer, which owns the graph under construction and its
/// sub-network's [`Weights`]: it gets their layers as its own methods.
pub trait SliceWriter {
    /// One teacher tensor, as the family names it.
    type Param: Copy;

    fn graph_and_weights(&mut self) -> (&mut GraphBuilder, &Weights<'_, Self::Param>);

    /// [`Weights::weight`] in the writer's graph.
    fn weight(&mut self, name: &str, param: Self::Param) -> Value {
        let (b, w) = self.graph_and_weights();
        w.weight(b, name, param)
    }

    /// [`Weights::layer_norm`] in the writer's graph.
    fn layer_norm(
        &mut self,
        name: &str,
        x: &Value,
        weight: Self::Param,
        bias: Self::Param,
    ) -> Value {
        let (b, w) = self.graph_and_weights();
        w.layer_norm(b, name, x, weight, bias)
    }

    /// [`Weights::linear`] in the writer's graph.
    fn linear(&mut self, name: &str, weight: Self::Param, bias: Option<Self::Param>) -> Linear {
        let (b, w) = self.graph_and_weights();
        w.linear(b, name, weight, bias)
    }
}

//! An SDR bundle's paths as one tree of graph cuts: each path's graph is cut
//! at its blocks (the stem, each `layer<s>.<i>`, the output nodes joined to
//! the last block), and equal cuts under the same parent are merged, so a
//! prefix of choices that several paths share runs once per image.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use ndarray::{Array2, Array4, ArrayD};
use tailor_runtime::bundle::Bundle;
use tailor_runtime::engine::segment::{Activation, Cut, Engine, Nodes, Plan, Run};
use tailor_runtime::engine::EngineError;

use crate::{CalibrationError, Dataset};

/// One cut and where it sits in the tree.
struct Node {
    /// `None`: fed the preprocessed image.
    parent: Option<usize>,
    cut: Cut,
    /// Which sub-network's graph it was first cut from (for errors).
    id: String,
}

/// Every sub-network's graph, cut and merged into a tree.
pub struct Tree {
    /// Parents before children.
    nodes: Vec<Node>,
    /// Per sub-network, in the manifest's order: its id and the node that
    /// yields its `cls_token`.
    leaves: Vec<(String, usize)>,
    image_size: usize,
}

/// The block a graph node belongs to, by name: `stem`, or `layer<s>.<i>`;
/// `None` for the output nodes (they join the last block).
fn block(node: &str) -> Option<&str> {
    if node.starts_with("stem.") {
        return Some("stem");
    }
    if !node.starts_with("layer") {
        return None;
    }
    let end = node
        .match_indices('.')
        .nth(1)
        .map_or(node.len(), |(i, _)| i);
    Some(&node[..end])
}

/// The node ranges of a graph's blocks, in order.
fn blocks<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Range<usize>> {
    let mut ranges: Vec<(Option<&str>, Range<usize>)> = Vec::new();
    for (i, name) in names.enumerate() {
        match (block(name), ranges.last_mut()) {
            (key, Some((last, range))) if key.is_none() || key == *last => range.end = i + 1,
            (key, _) => ranges.push((key, i..i + 1)),
        }
    }
    ranges.into_iter().map(|(_, r)| r).collect()
}

impl Tree {
    /// Reads every sub-network's graph (each verified against the manifest
    /// first) and merges their shared prefixes.
    pub fn build(bundle: &Bundle) -> Result<Tree, CalibrationError> {
        let manifest = bundle.manifest();
        let mut nodes: Vec<Node> = Vec::new();
        let mut leaves = Vec::new();
        for subnet in &manifest.subnets {
            bundle.verify(subnet)?;
            let engine = |source| CalibrationError::engine(subnet.id, source);
            let graph = Nodes::read(&bundle.graph_path(subnet)).map_err(engine)?;
            let mut parent = None;
            for range in blocks(graph.names()) {
                let cut = graph.cut(range).map_err(engine)?;
                let same = nodes
                    .iter()
                    .position(|n| n.parent == parent && n.cut == cut);
                parent = Some(same.unwrap_or_else(|| {
                    nodes.push(Node {
                        parent,
                        cut,
                        id: subnet.id.to_owned(),
                    });
                    nodes.len() - 1
                }));
            }
            let leaf = parent.ok_or_else(|| {
                engine(EngineError::Interface {
                    graph: bundle.graph_path(subnet),
                    problem: "the graph has no nodes".into(),
                })
            })?;
            leaves.push((subnet.id.to_owned(), leaf));
        }
        Ok(Tree {
            nodes,
            leaves,
            image_size: manifest.teacher.config.image_size() as usize,
        })
    }

    /// Cuts in the tree (the graphs' blocks counted once per shared prefix).
    pub fn cuts(&self) -> usize {
        self.nodes.len()
    }

    /// Cuts the sub-networks' graphs would run one by one.
    pub fn unshared_cuts(&self) -> usize {
        self.leaves
            .iter()
            .map(|&(_, mut node)| {
                let mut depth = 1;
                while let Some(p) = self.nodes[node].parent {
                    (node, depth) = (p, depth + 1);
                }
                depth
            })
            .sum()
    }

    /// Every sub-network's `cls_token` per image of `dataset` (manifest
    /// order), each cut run once per batch of images, the batches shared
    /// among `pass.threads` workers; `progress` hears the images done.
    pub fn features(
        &self,
        dataset: &Dataset,
        pass: Pass,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<(String, Array2<f32>)>, CalibrationError> {
        let batch = pass.batch.get();
        let mut plans: Vec<Plan> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let input = match node.parent {
                Some(p) => plans[p].output_shape().to_vec(),
                None => vec![batch, 3, self.image_size, self.image_size],
            };
            plans.push(node.cut.plan(&input, pass.engine).map_err(engine(node))?);
        }
        let n = dataset.images.len();
        let mut features: Vec<Array2<f32>> = self
            .leaves
            .iter()
            .map(|&(_, leaf)| {
                let width = plans[leaf].output_shape().iter().skip(1).product();
                Array2::zeros((n, width))
            })
            .collect();
        let starts: Vec<usize> = (0..n).step_by(batch).collect();
        let next = AtomicUsize::new(0);
        let (sender, batches) = mpsc::channel();
        thread::scope(|scope| {
            for _ in 0..pass.threads.get().min(starts.len()) {
                let sender = sender.clone();
                let (plans, starts, next) = (&plans, &starts, &next);
                scope.spawn(move || {
                    let mut worker = match Worker::new(self, plans, batch) {
                        Ok(worker) => worker,
                        Err(e) => return drop(sender.send(Err(e))),
                    };
                    while let Some(&start) = starts.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let leaves = worker.run(dataset, start);
                        let failed = leaves.is_err();
                        // A closed channel: the pass stopped on an error.
                        if sender.send(leaves.map(|l| (start, l))).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            drop(sender);
            let mut done = 0;
            for result in batches {
                let (start, leaves) = result?;
                let images = batch.min(n - start);
                for (cls, out) in leaves.iter().zip(&mut features) {
                    let rows = cls.rows().into_iter().take(images);
                    for (row, mut dest) in rows.zip(out.outer_iter_mut().skip(start)) {
                        dest.assign(&row);
                    }
                }
                done += images;
                progress(done);
            }
            Ok::<(), CalibrationError>(())
        })?;
        Ok(self
            .leaves
            .iter()
            .map(|(id, _)| id.clone())
            .zip(features)
            .collect())
    }
}

/// How [`Tree::features`] runs the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Images per run of each cut.
    pub batch: NonZeroUsize,
    /// Workers, each running whole batches through the tree on one thread
    /// (with either engine: an ONNX Runtime cut runs on its caller's thread).
    pub threads: NonZeroUsize,
    /// What plans and runs the cuts.
    pub engine: Engine,
}

/// Batches of 32 (tract's cuts gain little from larger ones), one worker
/// per core, on tract.
impl Default for Pass {
    fn default() -> Pass {
        Pass {
            batch: NonZeroUsize::new(32).expect("positive"),
            threads: thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            engine: Engine::Tract,
        }
    }
}

/// One thread's states of every cut and its image buffer.
struct Worker<'a> {
    tree: &'a Tree,
    runs: Vec<Run>,
    pixels: Array4<f32>,
    values: Vec<Activation>,
}

impl<'a> Worker<'a> {
    fn new(tree: &'a Tree, plans: &[Plan], batch: usize) -> Result<Self, CalibrationError> {
        let runs = plans
            .iter()
            .zip(&tree.nodes)
            .map(|(p, node)| p.spawn().map_err(engine(node)))
            .collect::<Result<_, _>>()?;
        let side = tree.image_size;
        Ok(Worker {
            tree,
            runs,
            pixels: Array4::zeros((batch, 3, side, side)),
            values: Vec::with_capacity(plans.len()),
        })
    }

    /// The batch of images from `start` through the tree: every leaf's
    /// `cls_token`, one row per image of the batch.
    fn run(
        &mut self,
        dataset: &Dataset,
        start: usize,
    ) -> Result<Vec<ArrayD<f32>>, CalibrationError> {
        let images = dataset.images.iter().skip(start);
        // A short last batch keeps the previous images in its tail; their
        // rows are dropped.
        for (image, out) in images.zip(self.pixels.outer_iter_mut()) {
            image.preprocess_into(out);
        }
        let input = Activation::pixels(self.pixels.view());
        self.values.clear();
        for (node, run) in self.tree.nodes.iter().zip(&mut self.runs) {
            let x = node.parent.map_or(&input, |p| &self.values[p]);
            let y = run.run(x).map_err(engine(node))?;
            self.values.push(y);
        }
        Ok(self
            .tree
            .leaves
            .iter()
            .map(|&(_, leaf)| self.values[leaf].to_array())
            .collect())
    }
}

/// An engine error of the sub-network `node` was cut from.
fn engine(node: &Node) -> impl FnOnce(EngineError) -> CalibrationError + '_ {
    move |source| CalibrationError::engine(&node.id, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_split_at_blocks_and_the_outputs_join_the_last() {
        let names = [
            "stem.conv",
            "stem.relu",
            "layer1.0.conv1.weight",
            "layer1.0.conv1",
            "layer1.0.relu",
            "layer1.1.conv1",
            "layer10.0.conv1",
            "tokens.flatten",
            "cls_token",
        ];
        assert_eq!(
            blocks(names.into_iter()),
            [0..2, 2..5, 5..6, 6..9],
            "layer1.1 and layer10.0 are different blocks"
        );
    }
}

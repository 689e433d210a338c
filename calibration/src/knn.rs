//! Weighted k-NN classification of features, DINO's protocol: features
//! L2-normalised, cosine similarity to every memory feature, the top k
//! neighbours vote for their class with weight `exp(sim / T)`, top-1 wins.

use ndarray::{ArrayView2, Axis};

/// A weighted k-NN classifier's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knn {
    /// Neighbours that vote.
    pub k: usize,
    /// Softmax temperature of the votes.
    pub temperature: f32,
}

impl Knn {
    /// DINO's k-NN evaluation: k = 20, T = 0.07.
    pub const DINO: Knn = Knn {
        k: 20,
        temperature: 0.07,
    };

    /// Top-1 accuracy in percent of classifying `test` by its neighbours in
    /// `train`. Rows are images; `classes` bounds the labels. Ties between
    /// class votes go to the lower class index.
    pub fn top1(
        &self,
        train: ArrayView2<'_, f32>,
        train_labels: &[u32],
        test: ArrayView2<'_, f32>,
        test_labels: &[u32],
        classes: usize,
    ) -> f64 {
        assert_eq!(train.nrows(), train_labels.len(), "one label per train row");
        assert_eq!(test.nrows(), test_labels.len(), "one label per test row");
        if test.nrows() == 0 {
            return 0.0;
        }
        let (train, test) = (normalised(train), normalised(test));
        let similarity = test.dot(&train.t());
        let k = self.k.min(train.nrows());
        let mut correct = 0usize;
        let mut order: Vec<usize> = (0..train.nrows()).collect();
        let mut votes = vec![0f64; classes];
        for (row, &label) in similarity.axis_iter(Axis(0)).zip(test_labels) {
            // Highest similarity first; equal ones by memory index.
            order.sort_unstable_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            votes.fill(0.0);
            for &j in &order[..k] {
                votes[train_labels[j] as usize] += (row[j] / f64::from(self.temperature)).exp();
            }
            let predicted =
                votes
                    .iter()
                    .enumerate()
                    .fold(0, |best, (c, v)| if *v > votes[best] { c } else { best });
            correct += usize::from(predicted == label as usize);
        }
        100.0 * correct as f64 / test.nrows() as f64
    }
}

/// Rows scaled to unit length (zero rows stay zero), in f64: neighbours a
/// float32 rounding apart would otherwise swap at the k-th place.
fn normalised(x: ArrayView2<'_, f32>) -> ndarray::Array2<f64> {
    let mut x = x.mapv(f64::from);
    for mut row in x.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_weighted_vote_beats_the_majority() {
        // Query along x. Memory: one class-1 point on the query, two
        // class-0 points at 60 degrees. With k = 3 a plain majority says 0;
        // exp(1/0.07) outweighs 2·exp(0.5/0.07), so the weighted vote says 1.
        let train = array![[1.0f32, 0.0], [0.5, 0.866], [0.5, -0.866]];
        let test = array![[2.0f32, 0.0]];
        assert_eq!(
            Knn::DINO.top1(train.view(), &[1, 0, 0], test.view(), &[1], 2),
            100.0
        );
        assert_eq!(
            Knn::DINO.top1(train.view(), &[1, 0, 0], test.view(), &[0], 2),
            0.0
        );
    }

    #[test]
    fn only_the_k_nearest_vote() {
        // 21 class-0 points close to the query and 200 class-1 points a
        // little further: the 20 neighbours are all class 0, though class 1
        // would win with every point voting (200·e^13.7 > 21·e^14.3).
        let mut train = Vec::new();
        let mut labels = Vec::new();
        for i in 0..221 {
            let (angle, label) = if i < 21 { (0.01, 0) } else { (0.3, 1) };
            train.extend([1.0f32, angle]);
            labels.push(label);
        }
        let train = ndarray::Array2::from_shape_vec((221, 2), train).unwrap();
        let test = array![[1.0f32, 0.0]];
        assert_eq!(
            Knn::DINO.top1(train.view(), &labels, test.view(), &[0], 2),
            100.0
        );
    }
}

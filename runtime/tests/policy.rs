//! The selection policy against simulated devices on a POA-shaped grid,
//! each search compared with brute force over the device's true curve.

use tailor_runtime::policy::{
    BundleSelector, Candidate, Limits, Measurement, Observation, PolicyError, Selector, Shortfall,
    Step, DEFAULT_BUDGET,
};

/// Tokens of a 224×224 image in 16×16 patches, plus CLS.
const TOKENS: u64 = 197;

/// One sub-network of the grid: POA's released ViT grid, widths 384..=1024
/// step 64 × depths 12..=24.
#[derive(Debug, Clone, Copy)]
struct Sub {
    width: u64,
    depth: u64,
}

impl Sub {
    /// qkv + proj + MLP (12·N·w²) and attention (2·N²·w) per block, plus the
    /// patch embedding.
    fn macs(&self) -> u64 {
        let (w, n) = (self.width, TOKENS);
        self.depth * (12 * n * w * w + 2 * n * n * w) + 768 * w * (n - 1)
    }

    fn weight_bytes(&self) -> u64 {
        4 * (self.depth * (12 * self.width * self.width + 13 * self.width) + 768 * self.width)
    }

    fn activation_bytes(&self) -> u64 {
        4 * TOKENS * self.width * 8
    }

    /// Depth counts for more than width: not monotone in MACs.
    fn quality(&self) -> f32 {
        50.0 + 1.5 * self.depth as f32 + 0.02 * self.width as f32
    }
}

fn grid() -> Vec<Sub> {
    let subs: Vec<Sub> = (384..=1024)
        .step_by(64)
        .flat_map(|width| (12..=24).map(move |depth| Sub { width, depth }))
        .collect();
    assert_eq!(subs.len(), 143);
    subs
}

fn candidates(subs: &[Sub], with_quality: bool) -> Vec<Candidate> {
    subs.iter()
        .map(|s| Candidate {
            macs: s.macs(),
            weight_bytes: s.weight_bytes(),
            activation_bytes: s.activation_bytes(),
            quality: with_quality.then(|| s.quality()),
        })
        .collect()
}

/// A simulated device: what measuring candidate `i` gives.
type Device<'a> = dyn Fn(usize) -> Observation + 'a;

/// Milliseconds per MAC of a device that runs the largest candidate in 400 ms.
fn ms_per_mac(subs: &[Sub]) -> f32 {
    400.0 / subs.iter().map(Sub::macs).max().unwrap() as f32
}

/// A device whose latency is `latency(i)` and whose memory is the tensors'
/// bytes plus 10%.
fn device<'a>(subs: &'a [Sub], latency: impl Fn(usize) -> f32 + 'a) -> Box<Device<'a>> {
    Box::new(move |i| {
        let s = subs[i];
        Observation::Measured(Measurement {
            latency_ms: latency(i),
            memory_bytes: (s.weight_bytes() + s.activation_bytes()) * 11 / 10,
        })
    })
}

/// Deterministic pseudo-noise in [-amplitude, amplitude].
fn noise(i: usize, amplitude: f32) -> f32 {
    let h = (i as u32).wrapping_add(1).wrapping_mul(2_654_435_761) >> 8;
    (h as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amplitude
}

fn limits(latency_ms: f32) -> Limits {
    Limits {
        latency_ms,
        memory_bytes: u64::MAX,
        min_quality: None,
        batch: 1,
    }
}

/// Latency limits from just below the cheapest candidate to beyond the
/// largest: log-spaced ones between candidates, and each decile's latency
/// exactly (a measurement equal to the limit fits).
fn sweep(latencies: &[f32]) -> Vec<f32> {
    let lo = latencies.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = latencies.iter().copied().fold(0.0, f32::max);
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f32::total_cmp);
    let spaced = (0..24).map(|k| lo * 1.003 * (hi * 1.1 / lo).powf(k as f32 / 23.0));
    let exact = (0..=10).map(|d| sorted[d * (sorted.len() - 1) / 10]);
    spaced.chain(exact).collect()
}

/// A finished search.
#[derive(Debug)]
struct Outcome {
    step: Step,
    measured: Vec<usize>,
}

impl Outcome {
    fn chosen(&self) -> Option<usize> {
        match self.step {
            Step::Chosen { index, .. } => Some(index),
            _ => None,
        }
    }
}

/// Steps a selector against `device` to the end.
fn search(candidates: &[Candidate], limits: Limits, device: &Device<'_>) -> Outcome {
    search_with(
        BundleSelector::new(candidates, limits).unwrap(),
        candidates.len(),
        device,
    )
}

fn search_with<const N: usize>(
    mut selector: Selector<N>,
    count: usize,
    device: &Device<'_>,
) -> Outcome {
    let mut measured = Vec::new();
    loop {
        match selector.next() {
            Step::Measure(i) => {
                assert!(
                    !measured.contains(&i),
                    "candidate {i} measured twice: {measured:?}"
                );
                assert!(measured.len() < count, "the search does not end");
                measured.push(i);
                selector.record(i, device(i)).unwrap();
            }
            step => {
                assert_eq!(selector.measured().count(), measured.len());
                return Outcome { step, measured };
            }
        }
    }
}

/// What measuring everything would choose: the best eligible candidate
/// whose true latency and memory fit, ties to the lower latency.
fn brute_force(candidates: &[Candidate], limits: &Limits, device: &Device<'_>) -> Option<usize> {
    let by_quality = candidates.iter().all(|c| c.quality.is_some());
    let score = |c: &Candidate| {
        if by_quality {
            c.quality.unwrap() as f64
        } else {
            c.macs as f64
        }
    };
    (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            let quality_ok = limits
                .min_quality
                .is_none_or(|min| c.quality.is_some_and(|q| q >= min));
            let memory_ok = (c.weight_bytes + limits.batch as u64 * c.activation_bytes) * 5 / 4
                <= limits.memory_bytes;
            quality_ok && memory_ok
        })
        .filter_map(|i| match device(i) {
            Observation::Measured(m) if limits.admit(&m) => Some((i, m.latency_ms)),
            _ => None,
        })
        .max_by(|&(a, la), &(b, lb)| {
            score(&candidates[a])
                .total_cmp(&score(&candidates[b]))
                .then(lb.total_cmp(&la))
        })
        .map(|(i, _)| i)
}

/// For every limit of the sweep: the search chooses what brute force does
/// (or proves nothing fits when brute force finds nothing) within
/// `max_measurements`.
fn agrees_with_brute_force(
    candidates: &[Candidate],
    base: Limits,
    device: &Device<'_>,
    max_measurements: usize,
) {
    let latencies: Vec<f32> = (0..candidates.len())
        .filter_map(|i| match device(i) {
            Observation::Measured(m) => Some(m.latency_ms),
            Observation::Failed => None,
        })
        .collect();
    sweep(&latencies).into_iter().for_each(|latency_ms| {
        let limits = Limits { latency_ms, ..base };
        let outcome = search(candidates, limits, device);
        let expected = brute_force(candidates, &limits, device);
        assert_eq!(
            outcome.chosen(),
            expected,
            "limit {latency_ms} ms: {outcome:?}"
        );
        if expected.is_none() {
            assert!(matches!(outcome.step, Step::NothingFits(_)), "{outcome:?}");
        }
        assert!(
            outcome.measured.len() <= max_measurements,
            "limit {latency_ms} ms: {} measurements: {outcome:?}",
            outcome.measured.len()
        );
    });
}

#[test]
fn linear_curve_matches_brute_force_in_few_measurements() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let device = device(&subs, |i| subs[i].macs() as f32 * k);
    // Ends because no candidate is left open, not because the budget ran out.
    agrees_with_brute_force(
        &candidates(&subs, false),
        limits(1.0),
        &*device,
        DEFAULT_BUDGET - 1,
    );
}

#[test]
fn affine_curve_with_large_overhead_matches_brute_force() {
    let subs = grid();
    // 60 ms of fixed cost: 4× what the cheapest candidate's work takes.
    let k = ms_per_mac(&subs) / 10.0;
    let device = device(&subs, |i| 60.0 + subs[i].macs() as f32 * k);
    agrees_with_brute_force(
        &candidates(&subs, false),
        limits(1.0),
        &*device,
        DEFAULT_BUDGET,
    );
}

#[test]
fn quality_ranking_matches_brute_force() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let device = device(&subs, |i| 5.0 + subs[i].macs() as f32 * k);
    let candidates = candidates(&subs, true);
    agrees_with_brute_force(&candidates, limits(1.0), &*device, DEFAULT_BUDGET - 1);
}

#[test]
fn min_quality_excludes_candidates_without_measuring_them() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let device = device(&subs, |i| 5.0 + subs[i].macs() as f32 * k);
    let candidates = candidates(&subs, true);
    let base = Limits {
        min_quality: Some(85.0),
        ..limits(1.0)
    };
    // `record` refuses ineligible candidates, so any attempt would fail.
    agrees_with_brute_force(&candidates, base, &*device, DEFAULT_BUDGET);
    let out = search(
        &candidates,
        Limits {
            latency_ms: 1e6,
            ..base
        },
        &*device,
    );
    let best = out.chosen().unwrap();
    assert!(out
        .measured
        .iter()
        .all(|&i| candidates[i].quality.unwrap() >= 85.0));
    assert_eq!(
        Some(best),
        brute_force(
            &candidates,
            &Limits {
                latency_ms: 1e6,
                ..base
            },
            &*device
        )
    );
}

#[test]
fn memory_limit_is_respected_before_and_after_measuring() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let surprise = |i: usize| i % 11 == 4;
    let device: Box<Device<'_>> = Box::new(|i| {
        let s = subs[i];
        let tensors = s.weight_bytes() + s.activation_bytes();
        Observation::Measured(Measurement {
            latency_ms: subs[i].macs() as f32 * k,
            // A few candidates need far more than predicted.
            memory_bytes: if surprise(i) {
                tensors * 2
            } else {
                tensors * 11 / 10
            },
        })
    });
    let candidates = candidates(&subs, false);
    // Room for the width-768 candidates up to about depth 18.
    let memory_bytes = candidates[subs
        .iter()
        .position(|s| s.width == 768 && s.depth == 18)
        .unwrap()]
    .predicted_footprint(1);
    let base = Limits {
        memory_bytes,
        ..limits(1.0)
    };
    agrees_with_brute_force(&candidates, base, &*device, DEFAULT_BUDGET);

    let out = search(
        &candidates,
        Limits {
            latency_ms: 1e6,
            ..base
        },
        &*device,
    );
    for &i in &out.measured {
        assert!(
            candidates[i].predicted_footprint(1) <= memory_bytes,
            "loaded {i}"
        );
    }
    let chosen = out.chosen().unwrap();
    assert!(!surprise(chosen));
    assert_eq!(
        Some(chosen),
        brute_force(
            &candidates,
            &Limits {
                latency_ms: 1e6,
                ..base
            },
            &*device
        )
    );
}

#[test]
fn batch_scales_activation_memory() {
    let c = Candidate {
        macs: 1,
        weight_bytes: 1_000,
        activation_bytes: 100,
        quality: None,
    };
    assert_eq!(c.predicted_footprint(1), 1_375);
    assert_eq!(c.predicted_footprint(8), 2_250);
    let huge = Candidate {
        weight_bytes: u64::MAX,
        ..c
    };
    assert_eq!(huge.predicted_footprint(1), u64::MAX);
}

#[test]
fn non_monotone_curve_matches_brute_force() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    // Every 13th candidate (one per depth band, shifted) runs 1.8× slower.
    let slow = |i: usize| i % 13 == (i / 13) % 13;
    let device = device(&subs, |i| {
        let base = 3.0 + subs[i].macs() as f32 * k;
        if slow(i) {
            base * 1.8
        } else {
            base
        }
    });
    agrees_with_brute_force(
        &candidates(&subs, false),
        limits(1.0),
        &*device,
        DEFAULT_BUDGET,
    );
}

#[test]
fn noisy_curve_chooses_within_the_noise() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let smooth = |i: usize| 10.0 + subs[i].macs() as f32 * k;
    let device = device(&subs, |i| smooth(i) * (1.0 + noise(i, 0.05)));
    let candidates = candidates(&subs, false);
    let smooth_latencies: Vec<f32> = (0..subs.len()).map(smooth).collect();
    for latency_ms in sweep(&smooth_latencies) {
        let limits = limits(latency_ms);
        let out = search(&candidates, limits, &*device);
        assert!(out.measured.len() <= DEFAULT_BUDGET, "{out:?}");
        // Every candidate that fits even 5% slower than its curve is matched.
        let safe = (0..subs.len())
            .filter(|&i| smooth(i) * 1.05 <= latency_ms)
            .max_by_key(|&i| candidates[i].macs);
        match (out.step, safe) {
            (Step::Chosen { index, measurement }, _) => {
                assert!(limits.admit(&measurement));
                assert_eq!(device(index), Observation::Measured(measurement));
                if let Some(safe) = safe {
                    assert!(
                        candidates[index].macs >= candidates[safe].macs,
                        "limit {latency_ms}: chose {index}, {safe} fits within noise: {out:?}"
                    );
                }
            }
            (step, None) => assert!(matches!(step, Step::NothingFits(_)), "{out:?}"),
            (step, Some(safe)) => panic!("limit {latency_ms}: {step:?} though {safe} fits"),
        }
    }
}

#[test]
fn failing_loads_fall_back_to_the_next_candidate() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    // The cheapest candidate and every seventh one fail to load.
    let fails = |i: usize| i.is_multiple_of(7);
    let ok = device(&subs, |i| subs[i].macs() as f32 * k);
    let device: Box<Device<'_>> = Box::new(|i| if fails(i) { Observation::Failed } else { ok(i) });
    agrees_with_brute_force(
        &candidates(&subs, false),
        limits(1.0),
        &*device,
        DEFAULT_BUDGET,
    );
}

#[test]
fn nothing_fits_when_the_two_cheapest_candidates_are_too_slow() {
    let subs = grid();
    let candidates = candidates(&subs, false);
    let mut by_macs: Vec<usize> = (0..subs.len()).collect();
    by_macs.sort_by_key(|&i| candidates[i].macs);
    let device = device(&subs, |i| 20.0 + subs[i].macs() as f32 * 1e-9);
    let out = search(&candidates, limits(19.0), &*device);
    assert_eq!(out.measured, by_macs[..2]);
    let Step::NothingFits(Shortfall::Missed {
        smallest,
        measurement,
    }) = out.step
    else {
        panic!("{out:?}")
    };
    assert_eq!(smallest, by_macs[0]);
    assert_eq!(device(smallest), Observation::Measured(measurement));
}

#[test]
fn a_slow_cheapest_candidate_does_not_hide_the_rest() {
    let subs = grid();
    let candidates = candidates(&subs, false);
    let cheapest = (0..subs.len()).min_by_key(|&i| candidates[i].macs).unwrap();
    let k = ms_per_mac(&subs);
    let device = device(&subs, |i| {
        let work = subs[i].macs() as f32 * k;
        if i == cheapest {
            work * 50.0
        } else {
            work
        }
    });
    let limits = limits(100.0);
    let out = search(&candidates, limits, &*device);
    assert_eq!(
        out.chosen(),
        brute_force(&candidates, &limits, &*device),
        "{out:?}"
    );
    assert!(out.measured.len() <= DEFAULT_BUDGET, "{out:?}");
}

#[test]
fn nothing_fits_past_the_budget_when_the_cheap_candidates_fail() {
    let subs = grid();
    let candidates = candidates(&subs, false);
    let mut by_macs: Vec<usize> = (0..subs.len()).collect();
    by_macs.sort_by_key(|&i| candidates[i].macs);
    // The ten cheapest fail, the rest are all too slow.
    let failing = &by_macs[..10];
    let ok = device(&subs, |_| 100.0);
    let device: Box<Device<'_>> = Box::new(|i| {
        if failing.contains(&i) {
            Observation::Failed
        } else {
            ok(i)
        }
    });
    let out = search(&candidates, limits(50.0), &*device);
    assert_eq!(
        out.measured,
        by_macs[..12],
        "cheapest first, past the budget"
    );
    assert!(
        matches!(out.step, Step::NothingFits(Shortfall::Missed { smallest, .. }) if smallest == by_macs[10]),
        "{out:?}"
    );
}

#[test]
fn every_candidate_failing_is_its_own_shortfall() {
    let subs = grid();
    let candidates = candidates(&subs, false);
    let out = search(&candidates, limits(50.0), &|_| Observation::Failed);
    assert_eq!(out.step, Step::NothingFits(Shortfall::Failed));
    assert_eq!(out.measured.len(), candidates.len());
}

#[test]
fn nothing_fits_in_memory_or_quality_without_measuring() {
    let subs = grid();
    let candidates = candidates(&subs, true);
    let smallest = (0..subs.len())
        .min_by_key(|&i| candidates[i].predicted_footprint(1))
        .unwrap();
    let predicted_bytes = candidates[smallest].predicted_footprint(1);
    let tight = Limits {
        memory_bytes: predicted_bytes - 1,
        ..limits(1e6)
    };
    let out = search(&candidates, tight, &|_| panic!("nothing may be measured"));
    assert_eq!(
        out.step,
        Step::NothingFits(Shortfall::Memory {
            smallest,
            predicted_bytes
        })
    );

    let picky = Limits {
        min_quality: Some(1_000.0),
        ..limits(1e6)
    };
    let out = search(&candidates, picky, &|_| panic!("nothing may be measured"));
    assert_eq!(out.step, Step::NothingFits(Shortfall::Quality));
}

#[test]
fn equal_quality_goes_to_the_lower_latency() {
    let c = |macs| Candidate {
        macs,
        weight_bytes: 1,
        activation_bytes: 1,
        quality: Some(1.0),
    };
    let candidates = [c(100), c(300), c(200)];
    let device = |i: usize| {
        Observation::Measured(Measurement {
            latency_ms: candidates[i].macs as f32 / 10.0,
            memory_bytes: 1,
        })
    };
    let out = search(&candidates, limits(100.0), &device);
    assert_eq!(out.chosen(), Some(0), "{out:?}");
}

#[test]
fn budget_caps_the_search_once_a_candidate_fits() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let candidates = candidates(&subs, false);
    let device = device(&subs, |i| 3.0 + subs[i].macs() as f32 * k);
    for budget in 1..=3 {
        let selector = BundleSelector::new(&candidates, limits(150.0))
            .unwrap()
            .with_budget(budget);
        let out = search_with(selector, candidates.len(), &*device);
        assert_eq!(out.measured.len(), budget, "{out:?}");
        assert!(out.chosen().is_some());
    }
}

#[test]
fn predictions_follow_the_measurements() {
    let subs = grid();
    let k = ms_per_mac(&subs);
    let candidates = candidates(&subs, false);
    let true_latency = |i: usize| 7.0 + subs[i].macs() as f32 * k;
    let mut selector = BundleSelector::new(&candidates, limits(150.0)).unwrap();
    assert_eq!(selector.predicted_latency_ms(0), None);
    for _ in 0..2 {
        let Step::Measure(i) = selector.next() else {
            panic!("measures twice first")
        };
        let m = Measurement {
            latency_ms: true_latency(i),
            memory_bytes: 1,
        };
        selector.record(i, Observation::Measured(m)).unwrap();
    }
    for i in 0..candidates.len() {
        let predicted = selector.predicted_latency_ms(i).unwrap();
        assert!(
            (predicted - true_latency(i)).abs() < 1e-3 * true_latency(i),
            "{i}: {predicted}"
        );
    }
    assert_eq!(selector.predicted_latency_ms(candidates.len()), None);
}

#[test]
fn bad_inputs_are_errors() {
    let c = Candidate {
        macs: 10,
        weight_bytes: 1,
        activation_bytes: 1,
        quality: None,
    };
    let ok = limits(10.0);
    for (bad, field) in [
        (
            Limits {
                latency_ms: f32::NAN,
                ..ok
            },
            "latency_ms",
        ),
        (
            Limits {
                latency_ms: 0.0,
                ..ok
            },
            "latency_ms",
        ),
        (
            Limits {
                latency_ms: f32::INFINITY,
                ..ok
            },
            "latency_ms",
        ),
        (
            Limits {
                memory_bytes: 0,
                ..ok
            },
            "memory_bytes",
        ),
        (
            Limits {
                min_quality: Some(f32::NAN),
                ..ok
            },
            "min_quality",
        ),
        (Limits { batch: 0, ..ok }, "batch"),
    ] {
        let err = Selector::<4>::new(&[c], bad).unwrap_err();
        assert_eq!(err, PolicyError::InvalidLimit { field });
        assert!(err.to_string().contains(field));
    }
    assert_eq!(
        Selector::<4>::new(&[], ok).unwrap_err(),
        PolicyError::NoCandidates
    );
    assert_eq!(
        Selector::<2>::new(&[c; 3], ok).unwrap_err(),
        PolicyError::TooManyCandidates {
            count: 3,
            capacity: 2
        }
    );
    assert_eq!(
        Selector::<4>::new(&[c, Candidate { macs: 0, ..c }], ok).unwrap_err(),
        PolicyError::InvalidCandidate {
            index: 1,
            problem: "zero MACs"
        }
    );
    assert!(matches!(
        Selector::<4>::new(
            &[Candidate {
                quality: Some(f32::NAN),
                ..c
            }],
            ok
        ),
        Err(PolicyError::InvalidCandidate { index: 0, .. })
    ));

    let big = Candidate {
        weight_bytes: 1 << 40,
        ..c
    };
    let mut selector = Selector::<4>::new(
        &[c, big],
        Limits {
            memory_bytes: 1 << 30,
            ..ok
        },
    )
    .unwrap();
    let fine = Observation::Measured(Measurement {
        latency_ms: 1.0,
        memory_bytes: 1,
    });
    assert_eq!(
        selector.record(2, fine),
        Err(PolicyError::UnknownCandidate { index: 2, count: 2 })
    );
    assert_eq!(
        selector.record(1, fine),
        Err(PolicyError::Ineligible { index: 1 })
    );
    let nan = Observation::Measured(Measurement {
        latency_ms: f32::NAN,
        memory_bytes: 1,
    });
    assert_eq!(
        selector.record(0, nan),
        Err(PolicyError::InvalidMeasurement { index: 0 })
    );
    assert_eq!(
        selector.measured().count(),
        0,
        "rejected observations are not kept"
    );
}

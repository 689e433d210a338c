//! `--judge-noise`: how far the judge's figure for one candidate (the
//! median of three jobs' p90s) lands from that candidate's typical p90
//! beside the bursty load, from many jobs of a few candidates. A selection
//! that holds a candidate's typical p90 exactly at the limit is judged "over
//! by more than 5%" as often as the judge lands that far above it; the
//! table also gives what holding it to its upper-third job instead would
//! cost (that job over the median) and leave (the judge above that job).

use std::path::PathBuf;

use tailor::runtime::manifest::Subnet;
use tailor::runtime::trial::Isolation;

use crate::{fresh_p90, median, Bursts, VIOLATION};

/// Jobs per candidate (`TAILOR_BENCH_NOISE_JOBS`).
const JOBS: usize = 30;

/// Measures the largest candidate and those at a quarter, half and three
/// quarters of the MACs ranking, on one thread (the selection's usual pick
/// here), `JOBS` fresh jobs each in turns beside the bursty load; prints a
/// table.
pub fn run(subnets: &[Subnet<'_>], graph: impl Fn(&Subnet<'_>) -> PathBuf, shape: [usize; 4]) {
    let jobs = std::env::var("TAILOR_BENCH_NOISE_JOBS")
        .ok()
        .map_or(JOBS, |v| v.parse().expect("TAILOR_BENCH_NOISE_JOBS=N"));
    assert!(jobs >= 3, "TAILOR_BENCH_NOISE_JOBS: at least 3");
    let mut ranked: Vec<&Subnet<'_>> = subnets.iter().collect();
    ranked.sort_by_key(|s| s.macs);
    let n = ranked.len();
    let picked: Vec<&Subnet<'_>> = [n / 4, n / 2, 3 * n / 4, n - 1]
        .iter()
        .map(|&i| ranked[i])
        .collect();
    let isolation = Isolation::current_exe().unwrap();
    let mut p90s = vec![Vec::new(); picked.len()];
    let bursts = Bursts::start();
    for _ in 0..jobs {
        for (subnet, p90s) in picked.iter().zip(&mut p90s) {
            p90s.push(fresh_p90(&isolation, &graph(subnet), 1, shape));
        }
    }
    drop(bursts);
    println!("**judge noise beside the bursty load ({jobs} jobs each, one thread)**\n");
    println!("| candidate | job p90s (ms): min / median / max | judge (median of 3) > median +{:.0}% | upper-third job / median | judge > upper-third job +{:.0}% |", VIOLATION * 100.0, VIOLATION * 100.0);
    println!("|---|---|---|---|---|");
    for (subnet, p90s) in picked.iter().zip(&mut p90s) {
        p90s.sort_by(f64::total_cmp);
        let typical = median(p90s);
        let upper = p90s[(2 * p90s.len()).div_ceil(3) - 1];
        println!(
            "| {} | {:.2} / {typical:.2} / {:.2} | {:.0}% | {:.2} | {:.0}% |",
            subnet.id,
            p90s[0],
            p90s[p90s.len() - 1],
            100.0 * judged_over(p90s, typical * (1.0 + VIOLATION)),
            upper / typical,
            100.0 * judged_over(p90s, upper * (1.0 + VIOLATION)),
        );
    }
    println!();
}

/// The share of the judges one could draw from `p90s`, every three of the
/// jobs, whose median exceeds `bound`.
fn judged_over(p90s: &[f64], bound: f64) -> f64 {
    let n = p90s.len();
    let (mut over, mut all) = (0u64, 0u64);
    for a in 0..n {
        for b in a + 1..n {
            for c in b + 1..n {
                all += 1;
                over += u64::from(median(&[p90s[a], p90s[b], p90s[c]]) > bound);
            }
        }
    }
    over as f64 / all as f64
}

//! The fuzz targets on stable: every seed (`fuzz/seeds/<target>/`, real objects) and every
//! finding (`fuzz/regressions/<target>/`) replayed through `walship::fuzzing`, then a short
//! bounded run of random mutations of the seeds (bit flips, truncations, splices, boundary
//! integers). Coverage-guided runs use cargo-fuzz on nightly (fuzz/README.md); this is the
//! part of fuzzing that runs in the normal suite and in CI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v.into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Each target's body must return, not panic; a panic names the input that caused it.
fn run_one(name: &str, f: fn(&[u8]), what: &str, data: &[u8]) {
    let r = std::panic::catch_unwind(|| f(data));
    if r.is_err() {
        let keep = std::env::temp_dir().join(format!("walship-fuzz-{name}-crash"));
        std::fs::write(&keep, data).unwrap();
        panic!(
            "fuzz target {name} panicked on {what}; input kept at {}",
            keep.display()
        );
    }
}

#[test]
fn every_seed_and_finding_replays_without_a_panic() {
    let mut seen = 0;
    for (name, f) in walship::fuzzing::TARGETS {
        let seeds = files(&root().join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name} has no seed");
        let findings = files(&root().join("regressions").join(name));
        for (p, data) in seeds.iter().chain(&findings) {
            run_one(name, *f, &p.display().to_string(), data);
            seen += 1;
        }
    }
    assert!(seen >= walship::fuzzing::TARGETS.len());
}

/// xorshift64*: deterministic per seed, so a failure reproduces from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let n = rng.below(b.len());
                b.truncate(n);
            }
            2 if b.len() >= 8 => {
                let i = rng.below(b.len() - 7);
                let v = [0u64, u64::MAX, u32::MAX as u64, 1 << 31, 1 << 63][rng.below(5)];
                b[i..i + 8].copy_from_slice(&v.to_be_bytes());
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let at = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                b.splice(at..at, other[from..].iter().take(64).copied());
            }
            4 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 0xff, b'0', b'9', 0x80, 0xe6][rng.below(6)];
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

/// WALSHIP_FUZZ_SECS per target (default 2): bounded, so CI's budget is safe.
#[test]
fn bounded_random_mutations_of_the_seeds() {
    let secs: f64 = std::env::var("WALSHIP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed = std::env::var("WALSHIP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    for (i, (name, f)) in walship::fuzzing::TARGETS.iter().enumerate() {
        let seeds = files(&root().join("seeds").join(name));
        let mut rng = Rng(seed ^ ((i as u64 + 1) << 32));
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < until {
            let data = mutate(&mut rng, &seeds);
            run_one(name, *f, &format!("mutation {n} (seed {seed})"), &data);
            n += 1;
        }
        eprintln!("fuzz {name}: {n} mutated inputs in {secs} s");
        assert!(n > 0);
    }
}

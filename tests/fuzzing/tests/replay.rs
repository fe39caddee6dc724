//! Replays every file of `fuzz/corpus/<target>/` through its target, then
//! seeded pseudo-random mutations of them: the short, stable part of the
//! fuzzing that runs with `cargo test --workspace`.
//!
//! `FUZZ_REPLAY_SEED` picks the mutations (the seed is printed; a failure
//! replays with it) and `FUZZ_REPLAY_MUTATIONS` how many per target. A
//! failing input is written out (path printed) to be added to the corpus.
use std::path::PathBuf;

const SEED: u64 = 0x5eed_ca12_2026;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect()
}

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four of libFuzzer's simpler moves: flip a bit, set a byte to an
/// edge value, insert, delete, truncate, copy a chunk, splice another file.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 1, 0x7f, 0x80, 0xff, rng.next() as u8][rng.below(6)];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => v.truncate(rng.below(len)),
            5 if len > 1 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(32));
                let chunk = v[from..from + n].to_vec();
                let to = rng.below(len);
                let end = (to + n).min(len);
                v[to..end].copy_from_slice(&chunk[..end - to]);
            }
            _ if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v
}

fn run_one(target: &str, f: fn(&[u8]), what: &str, input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let path = std::env::temp_dir().join(format!(
            "cairn-fuzz-{target}-{:016x}",
            input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            })
        ));
        std::fs::write(&path, input).expect("write the failing input");
        panic!(
            "{target}: {what} panicked; input saved to {} (add it to fuzz/corpus/{target}/)",
            path.display()
        );
    }
}

fn replay(target: &str, default_mutations: usize) {
    let f = cairn_fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name")
        .1;
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty");
    for (name, data) in &files {
        run_one(target, f, &format!("corpus file {name}"), data);
    }
    let seed = std::env::var("FUZZ_REPLAY_SEED")
        .map(|s| s.parse().expect("FUZZ_REPLAY_SEED is a u64"))
        .unwrap_or(SEED);
    let mutations = std::env::var("FUZZ_REPLAY_MUTATIONS")
        .map(|s| s.parse().expect("FUZZ_REPLAY_MUTATIONS is a number"))
        .unwrap_or(default_mutations);
    eprintln!(
        "{target}: {} corpus files, {mutations} mutations, seed {seed} (FUZZ_REPLAY_SEED={seed})",
        files.len()
    );
    let mut rng = Rng(seed);
    for m in 0..mutations {
        let (name, data) = &files[m % files.len()];
        let other = &files[rng.below(files.len())].1;
        let input = mutate(&mut rng, data, other);
        run_one(
            target,
            f,
            &format!("mutation {m} of {name} (seed {seed})"),
            &input,
        );
    }
}

#[test]
fn request_corpus_and_mutations() {
    replay("request", 5000);
}

#[test]
fn log_recovery_corpus_and_mutations() {
    replay("log_recovery", 2000);
}

#[cfg(feature = "config")]
#[test]
fn config_corpus_and_mutations() {
    replay("config", 3000);
}

//! Replays the committed fuzz corpus (`fuzz/regressions/TARGET/*`: seeds, the minimized corpus
//! libFuzzer grew, and every input that ever crashed or hung a target) through the targets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the regression corpus `{}`: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_returns_on_each_input() {
    for (name, target) in fuzz_targets::TARGETS {
        let files = corpus(name);
        assert!(
            files.len() >= 3,
            "`{name}` has {} corpus inputs",
            files.len()
        );
        for file in files {
            let data = std::fs::read(&file).expect("readable corpus file");
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "`{name}` panicked on `{}`", file.display());
            // A hang found by the fuzzer is kept here; a debug build gets generous room.
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "`{name}` took {:?} on `{}`",
                started.elapsed(),
                file.display()
            );
        }
    }
}

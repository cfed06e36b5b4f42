//! Every fuzz target's seed corpus (and any crash input added to it as a regression) through its
//! check, in the ordinary test run: the targets stay compiling and their seeds passing without AFL.

use std::collections::BTreeSet;
use std::path::Path;

fn names_in(dir: &Path, strip_rs: bool) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .map(|name| if strip_rs { name.trim_end_matches(".rs").to_string() } else { name })
        .collect()
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets: BTreeSet<String> = vkv_fuzz::TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(names_in(&root.join("src/bin"), true), targets, "src/bin/ and TARGETS differ");
    assert_eq!(names_in(&root.join("corpus"), false), targets, "corpus/ and TARGETS differ");
}

#[test]
fn seed_corpora_pass_their_checks() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut inputs = 0;
    for (name, check) in vkv_fuzz::TARGETS {
        let files = vkv_fuzz::input_files(&corpus.join(name));
        assert!(files.len() >= 3, "{name}: fewer than 3 seeds");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            eprintln!("{name}: {}", file.display());
            check(&data);
            inputs += 1;
        }
    }
    println!("{inputs} seed inputs checked");
}

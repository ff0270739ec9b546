//! The architecture registry is what the docs and the rest of bertqa read: the README's table
//! and the architectures that load.

use crate::common;

/// The README's table of supported architectures is the registry's, row for row.
#[test]
fn readme_table_is_the_registry() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = bertqa::models::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's architecture table differs from the registry; it should read:\n{table}"
    );
}

/// Every fixture's `model_type` is in the registry, and its parsed config gives the class that
/// transformers saved the fixture as.
#[test]
fn every_fixture_parses_to_its_transformers_class() {
    let fixtures = common::all_fixtures();
    // Every registry type has a fixture (architecture_fixtures fails otherwise).
    assert_eq!(
        common::architecture_fixtures().len(),
        bertqa::models::supported_model_types().len()
    );
    for (arch, _) in &fixtures {
        let config = bertqa::checkpoint::read_json(&common::fixture(arch).join("config.json"))
            .expect("config.json");
        let spec = bertqa::models::ModelSpec::parse(&config).expect("parse");
        let saved = config["architectures"][0].as_str().expect("architectures");
        assert_eq!(spec.qa_class(), saved, "{arch}");
    }
}

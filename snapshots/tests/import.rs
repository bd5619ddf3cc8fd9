//! Every bundled HF config imported: `cases/import/<model>.toml` names the config, the mesh and a
//! cut (`set`) small enough to read; the snapshot holds the summary of the full model and the
//! canonical text of the cut one.

mod common;

use moe_ir::Summary;

#[test]
fn import() {
    common::settings().bind(|| {
        insta::glob!("../cases/import", "*.toml", |path| {
            let opts = common::options(path);
            let config = opts.config.as_ref().expect("import cases name a config");
            let text =
                std::fs::read_to_string(common::root().join(config)).expect("config readable");
            let full_opts = common::CaseOptions {
                set: Vec::new(),
                ..common::options(path)
            };
            let full = common::load(&text, &full_opts).unwrap_or_else(|e| panic!("{config}: {e}"));
            let cut = common::load(&text, &opts).unwrap_or_else(|e| panic!("{config} cut: {e}"));
            let summary =
                serde_json::to_string_pretty(&Summary::of(&full)).expect("summary serializes");
            let again = common::load(&text, &opts).expect("imports twice");
            assert_eq!(
                moe_ir::json::to_json(&cut),
                moe_ir::json::to_json(&again),
                "import is deterministic"
            );
            common::text(&full);
            insta::assert_snapshot!(format!("{summary}\n\n{}", common::text(&cut)));
        });
    });
}

/// No bundled config is left without an import case.
#[test]
fn every_example_has_an_import_case() {
    let dir = common::root().join("examples/hf");
    let cases = common::root().join("snapshots/cases/import");
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&dir).expect("examples/hf exists") {
        let p = e.expect("dir entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            let stem = p
                .file_stem()
                .expect("file name")
                .to_string_lossy()
                .to_string();
            if !cases.join(format!("{stem}.toml")).exists() {
                missing.push(stem);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "examples without a snapshots/cases/import/<name>.toml: {missing:?}"
    );
}

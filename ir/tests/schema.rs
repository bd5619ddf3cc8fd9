//! The checked-in JSON Schema (docs/model.schema.json) is the one the types generate.
//! Regenerate with `cargo run -p moe-opt -- schema -o docs/model.schema.json`.

#[test]
fn checked_in_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/model.schema.json");
    let on_disk = std::fs::read_to_string(&path).expect("docs/model.schema.json exists");
    assert!(
        on_disk == moe_ir::json::schema(),
        "docs/model.schema.json is stale: run `cargo run -p moe-opt -- schema -o docs/model.schema.json`"
    );
}

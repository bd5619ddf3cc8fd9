//! model.json reader: any bytes give a graph or a `JsonError`, never a panic; a graph it reads
//! writes back and reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = moe_ir::json::from_json(text) {
        let again = moe_ir::json::from_json(&moe_ir::json::to_json(&g)).expect("written JSON reads back");
        assert_eq!(g, again);
        let _ = moe_ir::Summary::of(&g).to_string();
    }
});

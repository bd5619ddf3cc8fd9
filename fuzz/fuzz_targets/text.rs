//! Text-form parser: any bytes give a graph or a `TextError`, never a panic; a graph it reads
//! prints and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = moe_ir::text::from_text(text) {
        let printed = moe_ir::print::to_text(&g);
        let again = moe_ir::text::from_text(&printed).expect("printed text parses back");
        assert_eq!(moe_ir::print::to_text(&again), printed);
    }
});

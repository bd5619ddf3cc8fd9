//! Hugging Face config import: any bytes give a graph or an `ImportError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_ir::hf::{import, ImportOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Short sequences keep a fuzzed model small enough to build many per second.
    let opts = ImportOptions {
        seq: 16,
        ..ImportOptions::default()
    };
    if let Ok(g) = import(text, &[], &opts) {
        moe_ir::validate(&g).expect("an imported graph validates");
    }
});

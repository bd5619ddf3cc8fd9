//! Data-driven snapshot tests live in `tests/`; their inputs are the files under `cases/`, one
//! case per file with its options beside it. Bless changes with `cargo insta review`.

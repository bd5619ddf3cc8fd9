//! Invalid inputs and their error messages: each `cases/invalid/*.json` is a model.json or an HF
//! config (options in the `.toml` beside it) that must be refused with a message naming the problem.

mod common;

#[test]
fn invalid() {
    common::settings().bind(|| {
        insta::glob!("../cases/invalid", "*.json", |path| {
            let text = std::fs::read_to_string(path).expect("case readable");
            let opts = common::options(path);
            match common::load(&text, &opts) {
                Ok(_) => panic!("{} was accepted", path.display()),
                Err(msg) => insta::assert_snapshot!(msg),
            }
        });
    });
}

//! Importing the published configs under `examples/hf/` against `examples/hf/expected.toml`, and
//! the errors of broken configs.

#![allow(clippy::unwrap_used)]

use moe_ir::hf::{self, ImportError, ImportOptions};
use moe_ir::{Graph, Summary};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hf")
}

/// The published configs: file stem -> text.
fn configs() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(examples()).expect("examples/hf exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("readable config");
        out.insert(stem, text);
    }
    assert!(!out.is_empty(), "no configs under {}", examples().display());
    out
}

/// One table of expected.toml.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `rule`, `gap` and `note` document the numbers; the test reads the others
struct Expected {
    published: Option<f64>,
    transformers: Option<u64>,
    moe_layers: Option<u64>,
    source: Option<String>,
    rule: Option<String>,
    gap: Option<String>,
    note: Option<String>,
}

/// Reads examples/hf/expected.toml: one table per config.
fn expected() -> BTreeMap<String, Expected> {
    let path = examples().join("expected.toml");
    let text = std::fs::read_to_string(&path).expect("examples/hf/expected.toml exists");
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn import(text: &str, sets: &[&str]) -> Result<Graph, ImportError> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    hf::import(text, &sets, &ImportOptions::default())
}

#[test]
fn expectations_cover_exactly_the_configs() {
    let configs = configs();
    let expected = expected();
    for name in configs.keys() {
        assert!(
            expected.contains_key(name),
            "examples/hf/{name}.json has no [{name}] table in expected.toml"
        );
    }
    for (name, e) in &expected {
        assert!(
            configs.contains_key(name),
            "expected.toml has [{name}] but there is no examples/hf/{name}.json"
        );
        assert!(e.published.is_some(), "[{name}]: no `published`");
        assert!(e.moe_layers.is_some(), "[{name}]: no `moe_layers`");
        assert!(e.source.is_some(), "[{name}]: no `source`");
    }
}

#[test]
fn published_configs_import_as_published() {
    let expected = expected();
    let mut report = Vec::new();
    for (name, text) in configs() {
        let Some(e) = expected.get(&name) else {
            continue; // reported by expectations_cover_exactly_the_configs
        };
        let g = import(&text, &[]).unwrap_or_else(|err| panic!("{name}: {err}"));
        moe_ir::validate(&g).unwrap_or_else(|err| panic!("{name}: does not validate: {err}"));
        let s = Summary::of(&g);
        let moe = e.moe_layers.expect("checked");
        assert_eq!(s.moe_layers, moe, "{name}: MoE layers");
        assert_eq!(
            s.collectives.all_to_all,
            2 * s.moe_layers,
            "{name}: one dispatch and one combine all-to-all per MoE layer"
        );
        let published = e.published.expect("checked");
        let ratio = s.params as f64 / published;
        assert!(
            (0.98..=1.02).contains(&ratio),
            "{name}: {} params, published {published:.4e} (ratio {ratio:.4})",
            s.params
        );
        if let Some(t) = e.transformers {
            let r = s.params as f64 / t as f64;
            assert!(
                (0.999..=1.001).contains(&r),
                "{name}: {} params, transformers builds {t} (ratio {r:.6})",
                s.params
            );
        }
        // Deterministic: a second import gives the same bytes.
        let again = import(&text, &[]).expect("imported once already");
        assert_eq!(
            moe_ir::json::to_json(&g),
            moe_ir::json::to_json(&again),
            "{name}: two imports differ"
        );
        report.push(format!(
            "{name:<20} {:>16} params  ratio {ratio:.4}  moe_layers {}",
            s.params, s.moe_layers
        ));
    }
    println!("{}", report.join("\n"));
}

fn config(name: &str) -> String {
    configs()
        .remove(name)
        .unwrap_or_else(|| panic!("examples/hf/{name}.json is missing"))
}

/// Imports `name` with `sets`, expecting an error whose message names `key`.
fn err_names(name: &str, sets: &[&str], key: &str) {
    match import(&config(name), sets) {
        Ok(_) => panic!("{name} with {sets:?}: imported, expected an error naming `{key}`"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("`{key}`")) || msg.contains(key),
                "{name} with {sets:?}: error does not name `{key}`: {msg}"
            );
        }
    }
}

/// Imports `name` with `key` (a dotted path) removed, expecting an error naming it.
fn missing_names(name: &str, key: &str) {
    let mut v: Value = serde_json::from_str(&config(name)).expect("valid JSON");
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key");
    let mut obj = &mut v;
    for p in parts {
        obj = obj.get_mut(p).expect("nested object exists");
    }
    assert!(
        obj.as_object_mut().expect("object").remove(last).is_some(),
        "{name}: no key {key} to remove"
    );
    match hf::import(&v.to_string(), &[], &ImportOptions::default()) {
        Ok(_) => panic!("{name} without {key}: imported"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(key), "{name} without {key}: {msg}");
            assert!(msg.contains("missing"), "{name} without {key}: {msg}");
        }
    }
}

#[test]
fn unknown_model_type() {
    let e = import(r#"{"model_type": "gpt2", "n_embd": 768}"#, &[]).unwrap_err();
    assert!(matches!(e, ImportError::UnknownModelType { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("model_type") && msg.contains("gpt2"), "{msg}");
    assert!(
        msg.contains("deepseek_v3") && msg.contains("llama4_text"),
        "{msg}"
    );
    let e = import(r#"{"hidden_size": 8}"#, &[]).unwrap_err();
    assert!(e.to_string().contains("model_type"), "{e}");
    let e = import(r#"{"model_type": 3}"#, &[]).unwrap_err();
    assert!(e.to_string().contains("model_type"), "{e}");
}

#[test]
fn top_k_above_the_experts() {
    err_names(
        "mixtral-8x7b",
        &["num_experts_per_tok=9"],
        "num_experts_per_tok",
    );
    err_names(
        "qwen1.5-moe-a2.7b",
        &["num_experts_per_tok=61"],
        "num_experts_per_tok",
    );
    err_names(
        "qwen3-30b-a3b",
        &["num_experts_per_tok=129"],
        "num_experts_per_tok",
    );
    err_names(
        "olmoe-1b-7b",
        &["num_experts_per_tok=65"],
        "num_experts_per_tok",
    );
    err_names(
        "deepseek-v2-lite",
        &["num_experts_per_tok=65"],
        "num_experts_per_tok",
    );
    err_names(
        "deepseek-v3",
        &["num_experts_per_tok=257"],
        "num_experts_per_tok",
    );
    err_names("dbrx", &["ffn_config.moe_top_k=17"], "ffn_config.moe_top_k");
    err_names(
        "gpt-oss-20b",
        &["num_experts_per_tok=33"],
        "num_experts_per_tok",
    );
    // A plain key of a llama4 config is set inside text_config.
    err_names(
        "llama4-scout",
        &["num_experts_per_tok=17"],
        "text_config.num_experts_per_tok",
    );
    // Group-limited routing: k must fit in the kept groups (3 of 8 groups of 20 experts).
    err_names(
        "deepseek-v2",
        &["num_experts_per_tok=61"],
        "num_experts_per_tok",
    );
    err_names("deepseek-v2", &["topk_group=9"], "topk_group");
    err_names("deepseek-v2", &["n_group=7"], "n_group");
}

#[test]
fn negative_sizes() {
    err_names("mixtral-8x7b", &["hidden_size=-1"], "hidden_size");
    err_names(
        "qwen3-235b-a22b",
        &["moe_intermediate_size=-1536"],
        "moe_intermediate_size",
    );
    err_names("deepseek-v3", &["kv_lora_rank=-512"], "kv_lora_rank");
    err_names(
        "dbrx",
        &["ffn_config.ffn_hidden_size=-1"],
        "ffn_config.ffn_hidden_size",
    );
    err_names("switch-base-8", &["d_model=-768"], "d_model");
    err_names(
        "llama4-maverick",
        &["intermediate_size_mlp=-1"],
        "text_config.intermediate_size_mlp",
    );
    err_names("gpt-oss-120b", &["sliding_window=-128"], "sliding_window");
    let e = import(&config("olmoe-1b-7b"), &["num_hidden_layers=-16"]).unwrap_err();
    assert!(e.to_string().contains("negative"), "{e}");
}

#[test]
fn zero_sizes() {
    err_names("qwen2-57b-a14b", &["num_experts=0"], "num_experts");
    err_names(
        "deepseek-v2",
        &["moe_intermediate_size=0"],
        "moe_intermediate_size",
    );
    err_names("switch-base-8", &["num_layers=0"], "num_layers");
}

#[test]
fn missing_keys() {
    missing_names("mixtral-8x7b", "intermediate_size");
    missing_names("qwen1.5-moe-a2.7b", "moe_intermediate_size");
    missing_names("qwen1.5-moe-a2.7b", "shared_expert_intermediate_size");
    missing_names("qwen3-30b-a3b", "num_experts");
    missing_names("deepseek-v2", "kv_lora_rank");
    missing_names("deepseek-v3", "q_lora_rank");
    missing_names("deepseek-v3", "intermediate_size"); // needed by the 3 dense layers
    missing_names("olmoe-1b-7b", "vocab_size");
    missing_names("dbrx", "ffn_config.ffn_hidden_size");
    missing_names("dbrx", "ffn_config");
    missing_names("gpt-oss-20b", "num_local_experts");
    missing_names("llama4-scout", "text_config.intermediate_size");
    missing_names("llama4-maverick", "text_config.intermediate_size_mlp");
    missing_names("switch-base-8", "d_ff");
}

#[test]
fn mistyped_keys() {
    err_names("mixtral-8x7b", &["hidden_size=\"big\""], "hidden_size");
    err_names(
        "mixtral-8x7b",
        &["num_local_experts=8.5"],
        "num_local_experts",
    );
    err_names(
        "qwen3-30b-a3b",
        &["norm_topk_prob=\"yes\""],
        "norm_topk_prob",
    );
    err_names(
        "qwen3-30b-a3b",
        &["mlp_only_layers=[\"a\"]"],
        "mlp_only_layers[0]",
    );
    err_names("qwen3-30b-a3b", &["mlp_only_layers=3"], "mlp_only_layers");
    err_names("qwen1.5-moe-a2.7b", &["qkv_bias=1"], "qkv_bias");
    err_names("deepseek-v3", &["scoring_func=\"relu\""], "scoring_func");
    err_names("deepseek-v3", &["topk_method=\"random\""], "topk_method");
    err_names(
        "deepseek-v2-lite",
        &["routed_scaling_factor=\"x\""],
        "routed_scaling_factor",
    );
    err_names("dbrx", &["ffn_config=[1]"], "ffn_config");
    err_names(
        "dbrx",
        &["attn_config.kv_n_heads=true"],
        "attn_config.kv_n_heads",
    );
    err_names("gpt-oss-120b", &["layer_types=5"], "layer_types");
    err_names(
        "gpt-oss-120b",
        &["attention_bias=\"yes\""],
        "attention_bias",
    );
    err_names(
        "llama4-scout",
        &["no_rope_layers={}"],
        "text_config.no_rope_layers",
    );
    err_names("llama4-scout", &["text_config=7"], "text_config");
    err_names(
        "switch-base-8",
        &["dense_act_fn=\"gated-gelu\""],
        "dense_act_fn",
    );
    err_names("switch-base-8", &["router_bias=\"no\""], "router_bias");
}

#[test]
fn contradictory_keys() {
    err_names(
        "gpt-oss-20b",
        &["layer_types=[\"full_attention\"]"],
        "layer_types",
    );
    err_names("gpt-oss-20b", &["swiglu_limit=10.0"], "swiglu_limit");
    err_names(
        "llama4-scout",
        &["interleave_moe_layer_step=2"],
        "text_config.moe_layers",
    );
    err_names(
        "llama4-scout",
        &["text_config.no_rope_layer_interval=3"],
        "text_config.no_rope_layers",
    );
    // A text-model key at the top level of a llama4 config would be ignored: an error instead.
    err_names("llama4-maverick", &["moe_layers=[1]"], "moe_layers");
    err_names(
        "llama4-scout",
        &["moe_layers=[48]"],
        "text_config.moe_layers[0]",
    );
    err_names(
        "qwen3-235b-a22b",
        &["mlp_only_layers=[94]"],
        "mlp_only_layers[0]",
    );
    err_names(
        "qwen3-235b-a22b",
        &["num_local_experts=64"],
        "num_local_experts",
    );
    err_names(
        "switch-base-8",
        &["encoder_sparse_step=3"],
        "encoder_sparse_step",
    );
    err_names(
        "switch-base-8",
        &["num_selected_experts=2"],
        "num_selected_experts",
    );
    err_names("dbrx", &["tie_word_embeddings=true"], "tie_word_embeddings");
    err_names(
        "dbrx",
        &["ffn_config.moe_normalize_expert_weights=2"],
        "moe_normalize_expert_weights",
    );
    err_names(
        "mixtral-8x7b",
        &["num_key_value_heads=5"],
        "num_key_value_heads",
    );
    err_names(
        "qwen3-30b-a3b",
        &["use_sliding_window=true"],
        "sliding_window",
    );
}

#[test]
fn overrides_that_change_placement() {
    let s = |name: &str, sets: &[&str]| {
        Summary::of(&import(&config(name), sets).unwrap_or_else(|e| panic!("{name} {sets:?}: {e}")))
    };
    // Qwen: every other layer, minus an mlp_only layer.
    let q = s(
        "qwen3-30b-a3b",
        &["decoder_sparse_step=2", "mlp_only_layers=[1]"],
    );
    assert_eq!(q.moe_layers, 23);
    // DeepSeek: first_k_dense_replace, and the remote code's moe_layer_freq.
    assert_eq!(
        s("deepseek-v3", &["first_k_dense_replace=0"]).moe_layers,
        61
    );
    assert_eq!(s("deepseek-v2", &["moe_layer_freq=2"]).moe_layers, 29);
    // Llama 4: Maverick's step written as a list instead.
    let list: Vec<String> = (1..48).step_by(2).map(|i| i.to_string()).collect();
    let set = format!("text_config.moe_layers=[{}]", list.join(","));
    let a = s("llama4-maverick", &[&set]);
    let b = s("llama4-maverick", &[]);
    assert_eq!((a.moe_layers, a.params), (b.moe_layers, b.params));
    // A v5-style config: the expert count under num_local_experts.
    let mut v: Value = serde_json::from_str(&config("qwen3-30b-a3b")).expect("json");
    let n = v
        .as_object_mut()
        .expect("object")
        .remove("num_experts")
        .expect("key");
    v["num_local_experts"] = n;
    let g = hf::import(&v.to_string(), &[], &ImportOptions::default()).expect("v5 alias");
    assert_eq!(Summary::of(&g).params, s("qwen3-30b-a3b", &[]).params);
    // Switch: no sparse decoder layers.
    let sw = s(
        "switch-base-8",
        &["decoder_sparse_step=0", "num_sparse_decoder_layers=0"],
    );
    assert_eq!(sw.moe_layers, 6);
}

#[test]
fn huge_sizes_are_errors_not_panics() {
    err_names("mixtral-8x7b", &["hidden_size=4294967296"], "hidden_size");
    err_names("mixtral-8x7b", &["vocab_size=1e12"], "vocab_size");
    err_names(
        "switch-base-8",
        &["expert_capacity=18446744073709551615"],
        "expert_capacity",
    );
    let e = import(&config("mixtral-8x7b"), &["num_local_experts=2147483640"]).unwrap_err();
    assert!(
        matches!(
            e,
            ImportError::Unsupported(_) | ImportError::TooLarge { .. }
        ),
        "{e}"
    );
}

/// Every top-level (and text_config / ffn_config / attn_config) key of every config set to odd
/// values: an import may fail, never panic. One thread per config.
#[test]
fn odd_values_never_panic() {
    let odd = [
        "null",
        "-1",
        "0",
        "1",
        "\"x\"",
        "[1,-1]",
        "{}",
        "2147483647",
    ];
    let configs = configs();
    std::thread::scope(|scope| {
        for (name, text) in &configs {
            scope.spawn(move || {
                let v: Value = serde_json::from_str(text).expect("json");
                let mut keys: Vec<String> =
                    v.as_object().expect("object").keys().cloned().collect();
                for nested in ["text_config", "ffn_config", "attn_config"] {
                    if let Some(Value::Object(o)) = v.get(nested) {
                        keys.extend(o.keys().map(|k| format!("{nested}.{k}")));
                    }
                }
                let opts = ImportOptions {
                    seq: 16,
                    ..ImportOptions::default()
                };
                for key in &keys {
                    for value in odd {
                        let set = format!("{key}={value}");
                        let r = std::panic::catch_unwind(|| {
                            if let Ok(g) = hf::import(text, std::slice::from_ref(&set), &opts) {
                                let _ = Summary::of(&g);
                            }
                        });
                        assert!(r.is_ok(), "{name} --set {set}: panicked");
                    }
                }
            });
        }
    });
}

/// The attention ops' `rope_scaling` of an import.
fn rope_scalings(g: &Graph) -> Vec<Option<moe_ir::RopeScaling>> {
    g.nodes()
        .filter_map(|(_, n)| match &n.op {
            moe_ir::Op::Attention(a) => Some(a.rope_scaling),
            _ => None,
        })
        .collect()
}

#[test]
fn deepseek_rope_scaling_is_carried_or_refused() {
    use moe_ir::{RopeScaling, YarnScaling, F64};
    let small = ["num_hidden_layers=2", "first_k_dense_replace=1"];
    let yarn = |mscale: f64| {
        Some(RopeScaling::Yarn(YarnScaling {
            factor: F64(40.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(mscale),
            mscale_all_dim: F64(mscale),
            truncate: true,
        }))
    };
    let v3 = rope_scalings(&import(&config("deepseek-v3"), &small).unwrap());
    assert_eq!(v3, vec![yarn(1.0); 2]);
    let lite = rope_scalings(&import(&config("deepseek-v2-lite"), &small).unwrap());
    assert_eq!(lite, vec![yarn(0.707); 2]);
    let none = rope_scalings(
        &import(
            &config("deepseek-v3"),
            &[small[0], small[1], "rope_scaling=null"],
        )
        .unwrap(),
    );
    assert_eq!(none, vec![None; 2]);
    let linear = rope_scalings(
        &import(
            &config("deepseek-v2"),
            &[
                small[0],
                small[1],
                r#"rope_scaling={"type": "linear", "factor": 2}"#,
            ],
        )
        .unwrap(),
    );
    assert_eq!(
        linear,
        vec![Some(RopeScaling::Linear { factor: F64(2.0) }); 2]
    );
    err_names(
        "deepseek-v3",
        &["rope_scaling.type=\"dynamic\""],
        "rope_scaling.type",
    );
    err_names(
        "deepseek-v2",
        &["rope_scaling.factor=\"big\""],
        "rope_scaling.factor",
    );
    // Families without a scaling keep plain RoPE; one set on them is read as transformers does.
    let mixtral = import(&config("mixtral-8x7b"), &["num_hidden_layers=1"]).unwrap();
    assert_eq!(rope_scalings(&mixtral), vec![None]);
    let qwen = import(
        &config("qwen3-30b-a3b"),
        &[
            "num_hidden_layers=1",
            r#"rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}"#,
        ],
    )
    .unwrap();
    assert_eq!(
        rope_scalings(&qwen),
        vec![Some(RopeScaling::Yarn(YarnScaling {
            factor: F64(4.0),
            original_max_position_embeddings: 32768,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(1.0),
            mscale_all_dim: F64(0.0),
            truncate: true,
        }))]
    );
    err_names(
        "olmoe-1b-7b",
        &[r#"rope_scaling={"rope_type": "dynamic", "factor": 2.0}"#],
        "rope_scaling.rope_type",
    );
}

/// The attention ops of an import, in arena order.
fn attentions(g: &Graph) -> Vec<moe_ir::AttentionAttrs> {
    g.nodes()
        .filter_map(|(_, n)| match &n.op {
            moe_ir::Op::Attention(a) => Some(**a),
            _ => None,
        })
        .collect()
}

#[test]
fn rope_pairs_by_family() {
    use moe_ir::RopePairs::{Halves, Interleaved};
    // transformers: rotate_half (Mixtral, Qwen2/3-MoE, OLMoE, DBRX), GPT-OSS's chunk(2);
    // DeepSeek's interleave trick and Llama 4's view_as_complex pair adjacent dims.
    for (name, sets, want) in [
        ("mixtral-8x7b", &["num_hidden_layers=1"][..], Halves),
        ("qwen1.5-moe-a2.7b", &["num_hidden_layers=1"], Halves),
        ("qwen3-30b-a3b", &["num_hidden_layers=1"], Halves),
        ("olmoe-1b-7b", &["num_hidden_layers=1"], Halves),
        ("dbrx", &["n_layers=1"], Halves),
        (
            "gpt-oss-20b",
            &["num_hidden_layers=1", r#"layer_types=["full_attention"]"#],
            Halves,
        ),
        ("deepseek-v2-lite", &["num_hidden_layers=1"], Interleaved),
        ("deepseek-v2", &["num_hidden_layers=1"], Interleaved),
        (
            "deepseek-v3",
            &["num_hidden_layers=1", "first_k_dense_replace=0"],
            Interleaved,
        ),
        (
            "deepseek-v3",
            &[
                "num_hidden_layers=1",
                "first_k_dense_replace=0",
                "rope_interleave=false",
            ],
            Halves,
        ),
        (
            "llama4-scout",
            &[
                "text_config.num_hidden_layers=3",
                "text_config.moe_layers=[0,1,2]",
            ],
            Interleaved,
        ),
        (
            "llama4-maverick",
            &["text_config.num_hidden_layers=2"],
            Interleaved,
        ),
    ] {
        let g = import(&config(name), sets).unwrap_or_else(|e| panic!("{name}: {e}"));
        let pairs: Vec<_> = attentions(&g).iter().map(|a| a.rope_pairs).collect();
        assert!(
            !pairs.is_empty() && pairs.iter().all(|&p| p == want),
            "{name} {sets:?}: {pairs:?}"
        );
    }
    err_names("deepseek-v2", &["rope_interleave=false"], "rope_interleave");
    // Switch has no RoPE: nothing is paired.
    let sw = import(&config("switch-base-8"), &[]).unwrap();
    assert!(attentions(&sw).iter().all(|a| a.rope_pairs == Halves));
}

#[test]
fn llama4_rope_norm_and_temperature_by_layer() {
    use moe_ir::{Llama3Scaling, QueryTemperature, RopePairs, RopeScaling, F64};
    // Scout: layer 3 is NoPE (no_rope_layers), the others RoPE.
    let scout = [
        "text_config.num_hidden_layers=4",
        "text_config.moe_layers=[0,1,2,3]",
    ];
    let g = import(&config("llama4-scout"), &scout).unwrap();
    let a = attentions(&g);
    assert_eq!(a.len(), 4);
    let llama3 = Some(RopeScaling::Llama3(Llama3Scaling {
        factor: F64(8.0),
        low_freq_factor: F64(1.0),
        high_freq_factor: F64(4.0),
        original_max_position_embeddings: 8192,
    }));
    let temperature = Some(QueryTemperature {
        floor_scale: F64(8192.0),
        attn_scale: F64(0.1),
    });
    for rope in &a[..3] {
        assert_eq!(rope.rope_dim, 128);
        assert_eq!(rope.rope_pairs, RopePairs::Interleaved);
        assert_eq!(rope.rope_scaling, llama3);
        assert_eq!(rope.qk_norm_eps, Some(F64(1e-5)));
        assert_eq!(rope.query_temperature, None);
    }
    let nope = a[3];
    assert_eq!(nope.rope_dim, 0);
    assert_eq!(nope.rope_pairs, RopePairs::Halves);
    assert_eq!((nope.rope_scaling, nope.qk_norm_eps), (None, None));
    assert_eq!(nope.query_temperature, temperature);
    // Maverick: no scaling, no qk norm (use_qk_norm false); the temperature by default.
    let g = import(
        &config("llama4-maverick"),
        &["text_config.num_hidden_layers=4"],
    )
    .unwrap();
    let a = attentions(&g);
    assert!(a[..3]
        .iter()
        .all(|x| x.rope_scaling.is_none() && x.qk_norm_eps.is_none()));
    assert_eq!(a[3].query_temperature, temperature);
    // Switched off.
    let g = import(
        &config("llama4-scout"),
        &[
            scout[0],
            scout[1],
            "text_config.use_qk_norm=false",
            "text_config.attn_temperature_tuning=false",
        ],
    )
    .unwrap();
    assert!(attentions(&g)
        .iter()
        .all(|x| x.qk_norm_eps.is_none() && x.query_temperature.is_none()));
    err_names(
        "llama4-scout",
        &[r#"text_config.rope_scaling.rope_type="longrope""#],
        "text_config.rope_scaling.rope_type",
    );
    err_names(
        "llama4-scout",
        &["text_config.rope_scaling.high_freq_factor=0.5"],
        "text_config.rope_scaling.high_freq_factor",
    );
}

#[test]
fn gpt_oss_yarn_is_transformers_yarn() {
    use moe_ir::{RopeScaling, YarnScaling, F64};
    let small = [
        "num_hidden_layers=2",
        r#"layer_types=["sliding_attention","full_attention"]"#,
    ];
    let g = import(&config("gpt-oss-20b"), &small).unwrap();
    let want = Some(RopeScaling::Yarn(YarnScaling {
        factor: F64(32.0),
        original_max_position_embeddings: 4096,
        beta_fast: F64(32.0),
        beta_slow: F64(1.0),
        mscale: F64(1.0),
        mscale_all_dim: F64(0.0),
        truncate: false,
    }));
    assert_eq!(rope_scalings(&g), vec![want; 2]);
    err_names(
        "gpt-oss-20b",
        &[small[0], small[1], "rope_scaling.mscale_all_dim=1.0"],
        "rope_scaling.mscale_all_dim",
    );
}

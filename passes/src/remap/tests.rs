use super::*;
use moe_ir::hf::{import, ImportOptions};
use moe_ir::Summary;

fn imported(config: &str, mesh: &str, sets: &[&str]) -> Graph {
    let opts = ImportOptions {
        mesh: Some(Mesh::parse(mesh, 8).unwrap()),
        seq: 64,
        ..Default::default()
    };
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    import(config, &sets, &opts).unwrap()
}

fn remap(g: &Graph, tp: u64) -> Result<Graph, RemapError> {
    TensorParallel {
        tp,
        gpus_per_node: 8,
    }
    .remap(g)
}

const MIXTRAL: &str = include_str!("../../../examples/hf/mixtral-8x7b.json");

#[test]
fn mixtral_becomes_megatron_tensor_parallel() {
    let g = imported(MIXTRAL, "ep=8", &["num_hidden_layers=2"]);
    let out = remap(&g, 8).unwrap();
    moe_ir::validate(&out).unwrap();
    assert_eq!(out.mesh.to_string(), "tp=8:intra");
    let (before, after) = (Summary::of(&g), Summary::of(&out));
    assert_eq!(after.params, before.params, "the same weights");
    // Per layer: o_proj's all_reduce; the MoE keeps its two all-to-alls over tp and gathers back.
    assert_eq!(after.collectives.all_to_all, 4);
    assert_eq!(after.collectives.all_reduce, 2);
    assert_eq!(after.collectives.all_gather, 2);
    let text = moe_ir::print::to_text(&out);
    for line in [
        "bf16[4096, 4096@tp]  ; l0.self_attn.q_proj.weight",
        "bf16[4096, 1024@tp]  ; l0.self_attn.k_proj.weight",
        "bf16[4096@tp, 4096]  ; l0.self_attn.o_proj.weight",
        "bf16[8@tp, 4096, 14336]  ; l0.moe.experts.up_proj",
        "bf16[4096, 8]  ; l0.moe.gate.weight",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    // Tokens: the whole batch on every rank of the group (no dp axis left).
    assert!(text.contains("i32[512]  ; input_ids"), "{text}");
}

#[test]
fn dp_axis_keeps_the_rest_of_the_ranks() {
    let g = imported(MIXTRAL, "ep=8", &["num_hidden_layers=1"]);
    let out = remap(&g, 4).unwrap();
    moe_ir::validate(&out).unwrap();
    assert_eq!(out.mesh.to_string(), "dp=2:intra, tp=4:intra");
    let text = moe_ir::print::to_text(&out);
    assert!(text.contains("i32[512@dp]  ; input_ids"), "{text}");
}

#[test]
fn every_published_family_remaps_and_validates() {
    for (name, cfg) in [
        (
            "qwen3",
            include_str!("../../../examples/hf/qwen3-30b-a3b.json"),
        ),
        (
            "deepseek-v3",
            include_str!("../../../examples/hf/deepseek-v3.json"),
        ),
        (
            "olmoe",
            include_str!("../../../examples/hf/olmoe-1b-7b.json"),
        ),
        (
            "gpt-oss",
            include_str!("../../../examples/hf/gpt-oss-20b.json"),
        ),
        (
            "llama4",
            include_str!("../../../examples/hf/llama4-scout.json"),
        ),
        ("dbrx", include_str!("../../../examples/hf/dbrx.json")),
        (
            "switch",
            include_str!("../../../examples/hf/switch-base-8.json"),
        ),
    ] {
        // Families with per-layer lists (gpt-oss `layer_types`) keep their layer count.
        let opts = ImportOptions {
            mesh: Some(Mesh::parse("ep=8", 8).unwrap()),
            seq: 64,
            ..Default::default()
        };
        let g = import(cfg, &["num_hidden_layers=2".to_string()], &opts)
            .or_else(|_| import(cfg, &[], &opts))
            .unwrap();
        let out = remap(&g, 8).unwrap_or_else(|e| panic!("{name}: {e}"));
        moe_ir::validate(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        if std::env::var("MOE_SHOW").as_deref() == Ok(name) {
            println!("{}", moe_ir::print::to_text(&out));
        }
        assert_eq!(Summary::of(&out).params, Summary::of(&g).params, "{name}");
    }
}

#[test]
fn bad_tp_sizes_are_clear_errors() {
    let g = imported(MIXTRAL, "ep=8", &["num_hidden_layers=1"]);
    assert!(matches!(
        remap(&g, 3),
        Err(RemapError::RanksNotDivisible { .. })
    ));
    assert!(matches!(remap(&g, 0), Err(RemapError::ZeroTp)));
    let g16 = imported(
        MIXTRAL,
        "ep=8",
        &["num_hidden_layers=1", "num_local_experts=16"],
    );
    let e = TensorParallel {
        tp: 16,
        gpus_per_node: 8,
    }
    .remap(&g16)
    .unwrap_err();
    assert!(
        matches!(
            e,
            RemapError::RanksNotDivisible { .. } | RemapError::SpansNodes { .. }
        ),
        "{e}"
    );
    let g12 = imported(
        MIXTRAL,
        "ep=4",
        &["num_hidden_layers=1", "num_local_experts=12"],
    );
    let e = remap(&g12, 8).unwrap_err();
    assert!(matches!(e, RemapError::RanksNotDivisible { .. }), "{e}");
    let g6 = imported(
        MIXTRAL,
        "dp=4,ep=2",
        &["num_hidden_layers=1", "num_local_experts=6"],
    );
    let e = remap(&g6, 4).unwrap_err();
    assert!(
        e.to_string()
            .contains("6 experts cannot be split over tp=4"),
        "{e}"
    );
    let twice = remap(&remap(&g, 8).unwrap(), 8).unwrap_err();
    assert!(
        matches!(twice, RemapError::AlreadyRemapped { .. }),
        "{twice}"
    );
}

#!/usr/bin/env python3
"""Parity fixtures: tiny random models of every family in examples/hf, run by transformers.

For each published config `examples/hf/<name>.json` this script shrinks the widths, layer counts,
expert counts and vocabulary (keeping every switch that changes the function: routing, masks,
RoPE kinds and scaling, norms, biases, sinks, clipping), builds the model with Hugging Face
transformers (>= 5) on the CPU in float32, gives every parameter random values of a sane scale
(biases, sinks and DBRX's clipped projections included, so that no modelled term is zero), runs
fixed token ids through it and writes into `backend/tests/parity/<name>/`:

- `config.json`              the config as transformers saved it (`save_pretrained`);
- `model.safetensors`        the weights as transformers saved them (transformers 5 writes the
                             per-expert layout of the older releases for the families that had one);
- `fused.safetensors`        the same weights in transformers 5's in-memory layout (`state_dict()`:
                             `mlp.experts.gate_up_proj` [E, 2F, H] and `down_proj` [E, H, F]), for
                             the families where it differs from `model.safetensors`;
- `input_ids.npy`            int64 [batch, seq] token ids (Switch: `decoder_input_ids.npy` too);
- `logits.npy`               float32 [batch, seq, vocab], transformers' logits for those ids;
- `meta.json`                what was changed from the published config, and the versions used;
- `tokenizer.json`, `prompt.json` (mixtral-8x7b only): a tiny BPE tokenizer saved by
                             transformers, a prompt and the ids it encodes to.

`backend/tests/parity.rs` loads each fixture with moe-opt and compares logits, so CI needs no
torch. To refresh the fixtures (after a transformers release, or a change here):

    pip install torch transformers safetensors numpy   # CPU torch is enough
    python3 scripts/make_parity_fixtures.py            # all families
    python3 scripts/make_parity_fixtures.py dbrx       # one family
    cargo test -p moe-backend --test parity

The outputs are deterministic for a given torch / transformers version (fixed seeds).
"""

import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "examples", "hf")
OUT = os.path.join(ROOT, "backend", "tests", "parity")

BATCH, SEQ = 2, 8

# Published-config keys that only matter to training, quantised checkpoints or remote code.
# Token ids of the published vocabulary do not fit the tiny one.
DROP = [
    "quantization_config", "auto_map", "_name_or_path", "torch_dtype", "transformers_version",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
]

# Per-config changes: sizes only, plus the settings a tiny model needs to exercise a feature at 8
# tokens (a window or chunk shorter than the sequence, a clip bound the values reach).
SHRINK = {
    "mixtral-8x7b": dict(hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                         vocab_size=96),
    "mixtral-8x22b": dict(hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, num_local_experts=4,
                          vocab_size=96, sliding_window=5),
    "qwen1.5-moe-a2.7b": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                              shared_expert_intermediate_size=20, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, num_experts=6,
                              num_experts_per_tok=2, vocab_size=96, max_window_layers=2),
    "qwen2-57b-a14b": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                           shared_expert_intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                           num_experts_per_tok=2, vocab_size=96, max_window_layers=2),
    "qwen3-30b-a3b": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, num_experts=8, num_experts_per_tok=2, vocab_size=96,
                          max_window_layers=2),
    "qwen3-235b-a22b": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                            head_dim=8, num_experts=8, num_experts_per_tok=3, vocab_size=96,
                            max_window_layers=3, mlp_only_layers=[1]),
    "deepseek-v2-lite": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2,
                             kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                             v_head_dim=8, vocab_size=96),
    "deepseek-v2": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                        n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=2,
                        n_group=4, topk_group=2, q_lora_rank=24, kv_lora_rank=16,
                        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, vocab_size=96),
    "deepseek-v3": dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
                        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                        num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
                        n_shared_experts=1, n_group=4, topk_group=2, q_lora_rank=24,
                        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                        vocab_size=96, num_nextn_predict_layers=0),
    # clip_qkv is null in the published config: a bound the tiny model's values reach.
    "olmoe-1b-7b": dict(hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, num_experts=8,
                        num_experts_per_tok=3, vocab_size=96, clip_qkv=1.5),
    # clip_qkv stays 8 (the published value); the Wqkv values are scaled up so that it clips.
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, vocab_size=96,
                 attn_config={"kv_n_heads": 2}, ffn_config={"ffn_hidden_size": 16,
                                                            "moe_num_experts": 8, "moe_top_k": 3}),
    "gpt-oss-20b": dict(hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        num_local_experts=8, num_experts_per_tok=2, experts_per_token=2,
                        vocab_size=96, sliding_window=4),
    "gpt-oss-120b": dict(hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                         num_local_experts=8, num_experts_per_tok=3, experts_per_token=3,
                         vocab_size=96, sliding_window=3,
                         layer_types=["sliding_attention", "full_attention"]),
    "switch-base-8": dict(d_model=32, d_ff=24, d_kv=8, num_heads=4, num_layers=2,
                          num_decoder_layers=2, num_sparse_encoder_layers=1,
                          num_sparse_decoder_layers=1, num_experts=4, vocab_size=96,
                          expert_capacity=3, relative_attention_num_buckets=8,
                          relative_attention_max_distance=16),
    "llama4-scout": dict(hidden_size=32, intermediate_size=16, intermediate_size_mlp=24,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, num_local_experts=4, vocab_size=96,
                         moe_layers=[0, 1, 2, 3], no_rope_layers=[1, 1, 1, 0],
                         attention_chunk_size=4, floor_scale=2, attn_scale=0.5,
                         # transformers 5 types it as a bool; the published 4 means true.
                         attn_temperature_tuning=True),
    "llama4-maverick": dict(hidden_size=32, intermediate_size=16, intermediate_size_mlp=24,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=8, num_local_experts=8, vocab_size=96,
                            no_rope_layers=[1, 1, 1, 0], attention_chunk_size=4,
                            floor_scale=2, attn_scale=0.5),
}


def published(name):
    with open(os.path.join(HF, name + ".json")) as f:
        return json.load(f)


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def build(name):
    """The config dict and the transformers model of `name`, shrunk."""
    cfg = published(name)
    for k in DROP:
        cfg.pop(k, None)
    if cfg["model_type"] == "llama4":
        # The text model only (the vision tower is not imported).
        cfg = cfg["text_config"]
        cfg["model_type"] = "llama4_text"
        cfg.pop("_attn_implementation_autoset", None)
        for k in DROP:
            cfg.pop(k, None)
    merge(cfg, SHRINK[name])
    n = cfg.get("num_hidden_layers")
    if isinstance(cfg.get("layer_types"), list) and n is not None:
        cfg["layer_types"] = cfg["layer_types"][:n]
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    if model_type == "switch_transformers":
        model = transformers.SwitchTransformersForConditionalGeneration(config)
    elif model_type == "llama4_text":
        model = transformers.Llama4ForCausalLM(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.float().eval()


def randomise(model, name):
    """Random values of a sane scale for every parameter (and DeepSeek-V3's selection bias)."""
    g = torch.Generator().manual_seed(1)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for key, p in sorted(model.named_parameters()):
            if p.ndim == 1 and "norm" in key:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 or key.endswith("_bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embed" in key or key.endswith("shared.weight") or "wte" in key:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in key:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else hidden
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            if name == "dbrx" and key.endswith("Wqkv.weight"):
                # Values of about 8 so that clip_qkv = 8 cuts some of them.
                p.mul_(8.0)
        for key, b in model.named_buffers():
            if key.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g))


def ids(vocab, seed, shape=(BATCH, SEQ)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


def logits_of(model, input_ids, decoder_input_ids=None):
    with torch.no_grad():
        if decoder_input_ids is None:
            return model(input_ids=input_ids).logits
        return model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits


# A tokenizer for one fixture (its vocabulary size), saved by transformers, with a prompt and the
# ids transformers encodes it to: `moe-opt run --prompt` must give the same ids.
TOKENIZED = "mixtral-8x7b"
PROMPT = "the quick brown fox jumps"


def make_tokenizer(out, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>"],
                                  show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog",
            "mixture of experts routes every token", "pipeline stages run micro batches",
            "hello world"] * 20
    tok.train_from_iterator(text, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                                unk_token="<unk>")
    fast.save_pretrained(out)
    os.remove(os.path.join(out, "tokenizer_config.json"))
    ids = fast(PROMPT)["input_ids"]
    with open(os.path.join(out, "prompt.json"), "w") as f:
        json.dump({"prompt": PROMPT, "input_ids": [ids]}, f)
        f.write("\n")


def make(name):
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    model = build(name)
    randomise(model, name)
    vocab = model.config.vocab_size
    x = ids(vocab, 2)
    enc_dec = model.config.model_type == "switch_transformers"
    y = ids(vocab, 3) if enc_dec else None
    # Switch: count the tokens each sparse layer drops for capacity (the test covers drops).
    dropped = []
    for key, module in model.named_modules():
        if key.endswith("mlp.router") and hasattr(module, "expert_capacity"):
            module.register_forward_hook(
                lambda _m, _i, out: dropped.append(int(out[0].numel() // out[0].shape[-1]
                                                       - out[0].sum().item())))
    logits = logits_of(model, x, y).float().numpy()
    model.save_pretrained(out)
    for extra in ["generation_config.json"]:
        path = os.path.join(out, extra)
        if os.path.exists(path):
            os.remove(path)
    # transformers 5's own layout: the in-memory state dict, saved as it is.
    saved = {}
    from safetensors import safe_open
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        saved_keys = set(f.keys())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fused = os.path.join(out, "fused.safetensors")
    if any(".experts." in k and k not in saved_keys for k in state):
        # Tied weights appear once in a saved file.
        ptrs = {}
        for k in sorted(state):
            ptr = state[k].data_ptr()
            if ptr in ptrs:
                continue
            ptrs[ptr] = k
            saved[k] = state[k]
        save_file(saved, fused)
    elif os.path.exists(fused):
        os.remove(fused)
    np.save(os.path.join(out, "input_ids.npy"), x.numpy().astype(np.int64))
    if y is not None:
        np.save(os.path.join(out, "decoder_input_ids.npy"), y.numpy().astype(np.int64))
    np.save(os.path.join(out, "logits.npy"), logits.astype(np.float32))
    meta = {
        "published": "examples/hf/%s.json" % name,
        "changed": SHRINK[name],
        "batch": BATCH,
        "seq": SEQ,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "fused_layout": os.path.exists(fused),
    }
    if dropped:
        meta["dropped_tokens_per_sparse_layer"] = dropped
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    if name == TOKENIZED:
        make_tokenizer(out, vocab)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, logits {list(logits.shape)}, "
          f"fused layout {'yes' if meta['fused_layout'] else 'same as saved'}")


def main():
    names = sys.argv[1:] or sorted(SHRINK)
    for n in names:
        if n not in SHRINK:
            sys.exit(f"unknown config `{n}`; known: {', '.join(sorted(SHRINK))}")
        make(n)


if __name__ == "__main__":
    main()

"""How each of the Transformer's knobs crosses to Hugging Face transformers (export and import)."""

# Every Transformer knob and how it crosses to transformers: export (``architecture``,
# ``hf_config``) refuses a value the target class cannot express, import (``implied_config``)
# reads it from config.json. tests/unit/test_model_knobs.py fails on a knob missing here.
KNOBS_IN_HF = {
    "vocab_size": "vocab_size",
    "d_embed": "n_embd (GPT-2), hidden_size (Llama)",
    "n_layers": "n_layer, num_hidden_layers",
    "n_heads": "n_head, num_attention_heads",
    "n_kv_heads": "GPT-2: one per query head only; Llama: num_key_value_heads",
    "max_seq_len": "n_positions, max_position_embeddings",
    "norm": "GPT-2: layernorm only; Llama: rmsnorm only (cosinenorm: neither)",
    "norm_eps": "layer_norm_epsilon, rms_norm_eps",
    "norm_affine": "false: gains of ones (and LayerNorm biases of zeros) in the export, required back on import",
    "qk_norm": "false only: neither GPT-2 nor Llama normalizes queries and keys (Qwen3 does; not mapped yet)",
    "activation": "activation_function, hidden_act (gelu_new, silu, relu, relu2)",
    "gated": "GPT-2: false only; Llama: true only",
    "multiple_of": "Llama: intermediate_size, with ffn_dim_multiplier",
    "ffn_dim_multiplier": "Llama: intermediate_size, with multiple_of",
    "pos": "learned: GPT2LMHeadModel; rotary: LlamaForCausalLM",
    "rope_theta": "Llama: rope_theta, rope_parameters",
    "bias": "GPT-2: true only; Llama: attention_bias and mlp_bias",
    "dropout": "resid/embd/attn_pdrop, attention_dropout (training only: inference is the same)",
    "dropout_embed": "GPT-2: embd_pdrop (training only)",
    "dropout_attn": "GPT-2: attn_pdrop; Llama: attention_dropout (training only)",
    "dropout_resid": "GPT-2: resid_pdrop (training only)",
    "zero_init": "not exported: how weights start, not what the model computes",
    "parallel_block": "false only: GPT-2's and Llama's blocks are sequential",
    "tie_embeddings": "tie_word_embeddings",
    "sdpa": "not exported: how attention runs, not what it computes",
    "name": "wgpt.json: the preset the model was trained as",
}

"""Hugging Face export and import: GPT2LMHeadModel / LlamaForCausalLM weights, config.json, tokenizer.json."""

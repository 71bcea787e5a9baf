"""What tests/unit/test_hf.py and tests/e2e/test_hf_cli.py share: a small BPE, tiny models with
weights far from their init, and checkpoints as training writes them."""

import torch

from wgpt.tokenizers.bpe import BPETokenizer, train_bpe

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 20


def bpe300() -> BPETokenizer:
    """A 300-token byte-level BPE trained on TEXT."""
    return BPETokenizer(train_bpe([TEXT], 300), "bpe300")


def tiny(cls, vocab_size, **knobs):
    torch.manual_seed(0)
    model = cls(vocab_size=vocab_size, d_embed=32, n_layers=2, n_heads=4, max_seq_len=64, **knobs).eval()
    with torch.no_grad():  # larger than the init, and norms and biases off their 1 and 0: every weight matters
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def save_checkpoint(model, path, tokenizer, step=7):
    """A checkpoint as training writes one (the weights, what rebuilds model and tokenizer)."""
    model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "model_class": model_class,
            "model_config": model.config,
            "tokenizer": tokenizer.record(),
            "global_step": step,
        },
        path,
    )
    return path

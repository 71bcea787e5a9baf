"""What tests/unit/test_loss.py and tests/e2e/test_loss_compiled.py share: a tiny model's settings."""

TINY = dict(vocab_size=320, d_embed=32, n_layers=2, n_heads=4, max_seq_len=16)

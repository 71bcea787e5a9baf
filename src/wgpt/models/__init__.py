"""Model architectures.

``transformer.py`` is one decoder-only transformer whose architecture is set by knobs (norm,
activation, gated MLP, positions, key/value heads, bias, dropout, tied embeddings); ``gpt.py``
(GPT-2) and ``llama.py`` (Llama 3) are two settings of it, and ``conf/model/*.yaml`` list every
knob, so any mix is a config override: ``python train.py model=gpt2-tiny model.norm=rmsnorm``.

Adding an architecture is one file here plus one YAML under ``conf/model/`` with
``_target_: wgpt.models.<file>.<Class>``, no other edit. What the rest of wgpt asks of a model:

- a class in a module of this package (checkpoints may only name model classes from here);
- a constructor taking as keywords the keys of the YAML's ``model:`` block (besides
  ``_target_``) and ``vocab_size``, which train.py adds (the tokenizer's, padded to a multiple of 64);
- ``name`` and ``max_seq_len`` in that ``model:`` block: runs land in ``outputs/<name>/``, and
  ``data.seq_len`` defaults to ``max_seq_len`` (train.py refuses windows longer than it);
- ``self.config``: a dict of plain values (numbers, strings, booleans, None) such that
  ``type(model)(**model.config)`` builds the same architecture. Checkpoints store it to rebuild
  the model (eval.py, generate.py, resuming); the MFU counter builds a copy from it;
- construction on the meta device (``with torch.device("meta"): Model(**config)``), where
  that copy's FLOPs are counted;
- ``forward(input)``: token ids (B, T) int64 -> next-token logits (B, T, vocab_size).

Optional: ``loss(input, targets, reduction)`` -> the cross-entropy of the next-token predictions
("mean" or "sum" over the tokens). Training and validation call it where a model has it (see
``loss.next_token_loss``), so a model can score its output layer without the whole batch's logits
in memory, as ``Transformer.loss`` does with ``loss.linear_cross_entropy``; else they take
cross-entropy over ``forward``'s logits.

generate.py also reads ``model.max_seq_len`` and, for KV-cached decoding (its ``kv_cache=true``
default), calls ``model.new_cache(batch_size, max_len)`` and ``forward(input, cache)``; see
``Transformer.new_cache`` and kv_cache.py.
"""

import math

from wgpt.models.gpt import GPT
from wgpt.models.llama import Llama
from wgpt.models.transformer import Transformer

__all__ = ["GPT", "Llama", "Transformer", "padded_vocab_size"]


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """A tokenizer's size rounded up to a multiple of 64 for the embedding table: matmuls on such
    shapes run faster, and the extra rows are never a target."""
    return multiple * math.ceil(vocab_size / multiple)

"""Sampling text from a trained model: `python generate.py ckpt_path=...` (see conf/generate.yaml).

Shapes: B batch (prompts), S = longest prompt + max_new_tokens, V vocab.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf

from wgpt.util.errors import WgptError


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row (B,) drawn from next-token logits (B, V).

    temperature 0 is greedy (argmax; the filters cannot change it). Otherwise the logits are
    divided by the temperature, then, each None meaning off: top_k keeps the k likeliest tokens,
    min_p drops tokens less likely than min_p x the likeliest one, and top_p keeps the smallest
    set of likeliest tokens whose probability reaches top_p (the nucleus). The likeliest token
    always survives, so there is always something to draw.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if min_p is not None:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), -math.inf)
    if top_p is not None and top_p < 1.0:  # 1.0 keeps everything: skip the sort (and float round-off)
        probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)  # (B, V) each
        before = probs.cumsum(dim=-1) - probs  # mass of the likelier tokens
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, -math.inf)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_length(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> None:
    """A one-line WgptError when the longest prompt plus the new tokens do not fit the model."""
    if prompt_len + max_new_tokens <= max_seq_len:
        return
    fix = (
        f"lower max_new_tokens to at most {max_seq_len - prompt_len} or shorten the prompt"
        if prompt_len < max_seq_len
        else f"shorten the prompt to under {max_seq_len} tokens"
    )
    tokens = "token" if prompt_len == 1 else "tokens"
    raise WgptError(
        f"a prompt of {prompt_len} {tokens} + max_new_tokens={max_new_tokens} = {prompt_len + max_new_tokens} "
        f"tokens exceeds the model's max_seq_len={max_seq_len}: {fix}"
    )


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """Continue every prompt (token ids) by up to max_new_tokens sampled tokens, as one batch.

    Returns each prompt's new tokens only. A row stops at eos_token_id, which is left out of
    its output. An empty prompt begins with eos_token_id: it ends every document in the training
    bins, so what follows it is a new document. vocab_size (the tokenizer's size) keeps the ids of
    the model's padded vocabulary rows from being drawn. use_cache=False recomputes the whole
    sequence each step: the slow reference that the cached path must match token for token.

    Prompts of different lengths need no padding or masks (as in Meta's Llama reference): the
    batch is prefilled up to the shortest prompt, then every row advances one position per step;
    a row whose prompt goes on takes its prompt's token there instead of the sampled one.
    """
    if max_new_tokens < 1:
        raise WgptError(f"max_new_tokens={max_new_tokens} must be at least 1")
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts) and eos_token_id is None:
        raise WgptError("an empty prompt needs an eos_token_id to begin it with: give one or a non-empty prompt")
    prompts = [list(p) if len(p) else [eos_token_id] for p in prompts]
    lengths = [len(p) for p in prompts]
    check_length(max(lengths), max_new_tokens, model.max_seq_len)

    was_training = model.training
    model.eval()  # dropout would make every step differ from the reference
    device = next(model.parameters()).device
    B, S = len(prompts), max(lengths) + max_new_tokens
    tokens = torch.zeros(B, S, dtype=torch.long, device=device)  # (B, S): prompts, then samples
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    length = torch.tensor(lengths, device=device)  # (B,)
    in_prompt = torch.arange(S, device=device) < length[:, None]  # (B, S)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = model.new_cache(B, S) if use_cache else None

    prev = 0
    for cur in range(min(lengths), S):
        # With a cache, feed only the positions it has not seen; without, the whole sequence.
        logits = model(tokens[:, prev:cur], cache) if use_cache else model(tokens[:, :cur])
        logits = logits[:, -1]  # (B, V): the next position's
        if vocab_size is not None:
            logits[:, vocab_size:] = -math.inf
        sampled = sample_next(logits, temperature, top_k, top_p, min_p, generator)
        tokens[:, cur] = torch.where(in_prompt[:, cur], tokens[:, cur], sampled)
        if eos_token_id is not None:
            done |= ~in_prompt[:, cur] & (tokens[:, cur] == eos_token_id)
        done |= cur + 1 >= length + max_new_tokens  # the row has all its new tokens
        prev = cur
        if done.all():
            break
    model.train(was_training)

    outputs = []
    for row, n in zip(tokens.tolist(), lengths):
        new = row[n : n + max_new_tokens]
        if eos_token_id in new:
            new = new[: new.index(eos_token_id)]
        outputs.append(new)
    return outputs


def _number(cfg: DictConfig, key: str, kind: type, ok, expected: str, optional: bool = False):
    """cfg[key] as int or float, or a one-line WgptError naming the key, its value and what it must be."""
    value = cfg.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise WgptError(f"{key}={value} is not {'an integer' if kind is int else 'a number'}: give {expected}")
    if not ok(value):
        raise WgptError(f"{key}={value} is out of range: give {expected}")
    return kind(value)


def generation_settings(cfg: DictConfig) -> dict:
    """The sampling settings of conf/generate.yaml, checked; a one-line WgptError for a bad one."""
    prompt = cfg.get("prompt")
    if prompt is None:
        prompts = [""]
    elif isinstance(prompt, (list, tuple, ListConfig)):
        prompts = [str(p) for p in prompt]
        if not prompts:
            raise WgptError("prompt=[] holds no prompt: give a string, or a list like prompt='[To be,Once upon]'")
    else:
        prompts = [str(prompt)]
    return dict(
        prompts=prompts,
        max_new_tokens=_number(cfg, "max_new_tokens", int, lambda v: v >= 1, "an integer >= 1"),
        temperature=_number(cfg, "temperature", float, lambda v: v >= 0, "a number >= 0 (0 is greedy)"),
        top_k=_number(cfg, "top_k", int, lambda v: v >= 1, "an integer >= 1, or null for off", optional=True),
        top_p=_number(cfg, "top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1], or null for off", optional=True),
        min_p=_number(cfg, "min_p", float, lambda v: 0 <= v <= 1, "a number in [0, 1], or null for off", optional=True),
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WgptError(f"device={name} is not a device: give auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WgptError(f"device={name} but CUDA is not available here: give device=cpu or device=auto")
    return device


def generate_from_config(cfg: DictConfig) -> list[str]:
    """Print each prompt followed by its sampled continuation; a speed summary goes to stderr."""
    from wgpt.interop.sources import (
        load_model_source,  # lazy: Lightning (checkpoint IO), after generate.py's cheap checks
    )

    settings = generation_settings(cfg)  # checked before the (slow) checkpoint load
    prompts = settings.pop("prompts")
    device = pick_device(str(cfg.get("device", "auto")))
    use_cache = cfg.get("kv_cache", True)
    if not isinstance(use_cache, bool):
        raise WgptError(f"kv_cache={use_cache} is not true or false")
    seed = _number(cfg, "seed", int, lambda v: v >= 0, "an integer >= 0, or null for a new sample", optional=True)
    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise WgptError(
            "ckpt_path is not set: give the .ckpt file to sample from (or a run dir, a .safetensors, "
            "a Hugging Face model directory), e.g. ckpt_path=outputs/gpt2-tiny/<run>/checkpoints/recent.ckpt"
        )
    loaded = load_model_source(cfg.ckpt_path)  # the model and the tokenizer it was trained with
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    if use_cache and not hasattr(model, "new_cache"):  # a model added without a KV cache still decodes
        print(f"{type(model).__name__} has no KV cache (new_cache): decoding without one", file=sys.stderr)
        use_cache = False
    ids = [tokenizer.encode(p) for p in prompts]

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    start = time.perf_counter()
    outputs = generate(
        model,
        ids,
        **settings,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=use_cache,
        generator=generator,
        vocab_size=len(tokenizer),
    )
    seconds = time.perf_counter() - start

    texts = [prompt + tokenizer.decode(new) for prompt, new in zip(prompts, outputs)]
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"{'-' * 20} prompt {i + 1}/{len(texts)} {'-' * 20}")
        print(text)
    n = sum(len(new) for new in outputs)
    print(
        f"generated {n} tokens for {len(prompts)} prompt(s) in {seconds:.2f} s: {n / seconds:.1f} tokens/s "
        f"(kv_cache={'on' if use_cache else 'off'}, {device.type})",
        file=sys.stderr,
    )
    return texts

"""Show a model's modules with the shapes one forward pass gives them: `python -m wgpt.shapes [overrides...]`.

Overrides are those of the training config (conf/train.yaml): ``model=llama3-tiny
model.n_layers=2 data.batch_size=2 data.seq_len=16 tokenizer=bpe tokenizer.vocab_size=4096``.
The model is built as train.py builds it (the tokenizer config's vocabulary, padded to a multiple
of 64; no tokenizer is trained or loaded) and called once on a (data.batch_size, data.seq_len)
batch of token ids. It prints the total parameter count (and, where one is not 0, the dropout
probability at each place: embed, attn, resid), then a tree of the modules: each one's class,
what it was called with and what it returned (shapes; the dtype where it is not the default
float), and its parameters.

The pass runs on the meta device, where tensors have shapes but no memory, so a 1B-parameter
config costs nothing; a model whose forward needs values (``.item()``, an op without a meta
kernel) is run on the CPU instead, and the top line says so. Any model works, also one added
as a file under src/wgpt/models/ with its conf/model/<name>.yaml.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from wgpt.core.compose import compose_train_config, split_arguments
from wgpt.core.report import one_line_errors
from wgpt.core.validate import check_values
from wgpt.data.tokenizer import end_of_text_id, tokenizer_spec
from wgpt.models import padded_vocab_size
from wgpt.models.build import build_model, build_on_meta
from wgpt.models.knobs import DROPOUT_PLACES, VARIANT_KNOBS, place_dropout
from wgpt.util.checks import check_targets
from wgpt.util.errors import WgptError

MAX_ITEMS = 4  # items of a tuple/list/dict shown before the rest is counted


@dataclass(frozen=True)
class Call:
    """One call of a module, described: its arguments and what it returned."""

    inputs: str
    output: str


# Describing values.


def describe(value: Any) -> str:
    """A tensor's shape (and its dtype where that is not the default float); containers item by item."""
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.get_default_dtype() else f" {str(value.dtype).removeprefix('torch.')}"
        return f"{tuple(value.shape)}{dtype}"
    if isinstance(value, (tuple, list)):
        items = [describe(v) for v in value[:MAX_ITEMS]] + _more(value)
        return ("({})" if isinstance(value, tuple) else "[{}]").format(", ".join(items))
    if isinstance(value, dict):
        items = [f"{k}: {describe(v)}" for k, v in list(value.items())[:MAX_ITEMS]] + _more(value)
        return "{" + ", ".join(items) + "}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 20 else value[:20] + "…")
    return type(value).__name__  # a cache object, a dataclass, ...


def _more(items) -> list[str]:
    return [f"… {len(items)} in all"] if len(items) > MAX_ITEMS else []


def describe_arguments(module: nn.Module, args: tuple, kwargs: dict) -> str:
    """The arguments of a call, named after ``forward``'s parameters where there are several
    (``x=(2, 16, 192), rope=(...), layer=0``); those passed as None are left out."""
    try:
        named = dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):  # no signature to bind to: positions, then keywords
        named = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
    named = {k: v for k, v in named.items() if v is not None}
    if len(named) == 1:
        return describe(next(iter(named.values())))
    return ", ".join(f"{k}={describe(v)}" for k, v in named.items())


# Running the model.


def trace(model: nn.Module, input: torch.Tensor) -> dict[nn.Module, list[Call]]:
    """Every call of every module during one forward pass of ``input``, in call order."""
    calls: dict[nn.Module, list[Call]] = {}

    def record(module, args, kwargs, output):
        calls.setdefault(module, []).append(Call(describe_arguments(module, args, kwargs), describe(output)))

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(input)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def build_and_trace(cfg: DictConfig, vocab_size: int, batch: tuple[int, int], eot_id: int | None = None):
    """(model, calls, input, where it ran): on the meta device where the model allows, else on the CPU."""
    model = build_on_meta(cfg.model, vocab_size, eot_id)  # on meta; a bad knob is one WgptError line
    input = torch.zeros(batch, dtype=torch.long, device="meta")
    try:
        return model, trace(model, input), input, "meta"
    except Exception as e:  # an op with no meta kernel, or one that reads values (.item(), `if tensor:`)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    model = build_model(cfg.model, vocab_size, eot_id)
    input = torch.zeros(batch, dtype=torch.long)
    return model, trace(model, input), input, f"cpu (not on meta: {reason})"


# The tree.


def parameter_note(module: nn.Module, prefix: str, owners: dict[int, str]) -> str:
    """The module's own parameters, those of its whole subtree where it has children, and the
    weights it shares with an earlier module (counted there, as in the total)."""
    own, tied = 0, []
    for name, p in module.named_parameters(recurse=False):
        owner = owners[id(p)]
        if owner == f"{prefix}{name}":
            own += p.numel()
        else:
            tied.append(f"{name} tied to {owner}")
    total = sum(p.numel() for p in module.parameters())  # each shared tensor once
    notes = [f"{own:,} params"] if own else []
    if total != own and any(True for _ in module.children()):
        notes.append(f"{total:,} in all")
    return ", ".join(notes + tied)


def label(name: str, module: nn.Module, calls: list[Call], params: str) -> Text:
    text = Text()
    text.append(name, style="bold")
    text.append(f" {type(module).__name__}", style="cyan")
    if calls and len(set(calls)) == 1:  # once, or each time alike
        text.append(f"  {calls[0].inputs} → {calls[0].output}", style="green")
        if len(calls) > 1:
            text.append(f"  ×{len(calls)}", style="magenta")
    elif not calls and not any(True for _ in module.children()):
        text.append("  not called", style="dim")
    if params:
        text.append(f"  {params}", style="yellow")
    return text


def module_tree(model: nn.Module, calls: dict[nn.Module, list[Call]]) -> Tree:
    """The modules as a tree, in the order the model registers them; a module called several
    times with different shapes gets a line per call."""
    owners = {id(p): name for name, p in model.named_parameters()}  # the first name of each (tied) tensor

    def add(parent: Tree | None, name: str, prefix: str, module: nn.Module) -> Tree:
        made = calls.get(module, [])
        node_label = label(name, module, made, parameter_note(module, prefix, owners))
        node = Tree(node_label, guide_style="dim") if parent is None else parent.add(node_label)
        if len(set(made)) > 1:
            for i, call in enumerate(made, 1):
                node.add(Text(f"call {i}: {call.inputs} → {call.output}", style="green"))
        for child_name, child in module.named_children():
            add(node, child_name, f"{prefix}{child_name}.", child)
        return node

    return add(None, "model", "", model)


def dropout_note(model: nn.Module) -> str:
    """The headline's ``; dropout embed 0.1, attn 0.1, resid 0``: the probability at each place (its
    own dropout_<place>, else dropout), where one is not 0; nothing for a model without those knobs."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "dropout" not in config:
        return ""
    places = {place: place_dropout(config, place) for place in DROPOUT_PLACES}
    if not any(places.values()):
        return ""
    return "; dropout " + ", ".join(f"{place} {p:g}" for place, p in places.items())


def variant_note(model: nn.Module) -> str:
    """The headline's ``; attn_window 16, window_pattern SL, logit_softcap 30``: the attention and
    output knobs (VARIANT_KNOBS) not at their off values; nothing for a model without them."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        return ""
    on = [(k, config[k]) for k, off in VARIANT_KNOBS.items() if k in config and config[k] != off]
    shown = [k if v is True else f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in on]
    if config.get("document_mask"):
        shown = [f"document_mask (eot_id {config['eot_id']})" if k == "document_mask" else k for k in shown]
    return "; " + ", ".join(shown) if shown else ""


def headline(cfg: DictConfig, model: nn.Module, input: torch.Tensor, vocab_size: int, where: str) -> str:
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once
    return (
        f"Model {cfg.model.get('name', type(model).__name__)} ({cfg.model._target_}): {total:,} parameters "
        f"({total / 1e6:.2f}M); input {describe(input)} token ids (data.batch_size x data.seq_len), "
        f"vocab_size {vocab_size:,}{dropout_note(model)}{variant_note(model)}; run on {where}"
    )


def print_tree(line: str, tree: Tree) -> None:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=1000)  # a pipe or file: one line per module, never wrapped
    console.print(Text(line, style="bold"), soft_wrap=True)
    console.print(tree)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    overrides, words = split_arguments(argv)
    with one_line_errors():
        if words:
            raise WgptError(
                f"{words[0]!r} is not an override: give key=value overrides of conf/train.yaml, e.g. model=llama3-tiny"
            )
        cfg = compose_train_config(overrides)

        check_values(cfg)  # what train.py checks first: batch size and sequence length among them
        check_targets(cfg.model, "model")  # a misspelled model key, named with its close matches
        spec = tokenizer_spec(cfg)  # the spec alone: nothing trained
        vocab_size = padded_vocab_size(spec.vocab_size)
        batch = (cfg.data.batch_size, cfg.data.seq_len)
        model, calls, input, where = build_and_trace(cfg, vocab_size, batch, end_of_text_id(spec))
    print_tree(headline(cfg, model, input, vocab_size, where), module_tree(model, calls))


if __name__ == "__main__":
    main()

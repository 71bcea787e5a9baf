"""Optimizers from config (wgpt.optim): parameter kinds, group rules, Muon beside AdamW as one
optimizer. Every conf/optim option training through train.py: tests/e2e/test_optim_cli.py."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from wgpt.optim import CombinedOptimizer, optimizer_factory, parameter_kinds

from conftest import ROOT


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("model_name", ["gpt2-tiny", "llama3-tiny"])
def test_muon_takes_every_hidden_matrix_and_adamw_the_rest(model_name):
    cfg = composed(f"model={model_name}", "optim=muon", "model.tie_embeddings=false")
    model = instantiate(cfg.model, vocab_size=320)
    optimizer = optimizer_factory(cfg.optim)(model)
    assert isinstance(optimizer, CombinedOptimizer)
    adamw, muon = optimizer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        hidden = p.dim() == 2 and name.startswith("blocks.")  # attention and MLP weights
        assert (id(p) in in_muon) == hidden and (id(p) in in_adamw) != hidden, name
    kinds = parameter_kinds(model)
    assert kinds["wte.weight"] == "embedding" and kinds["lm_head.weight"] == "output"
    assert {kinds[n] for n, p in model.named_parameters() if p.dim() == 1} == {"vector"}
    # One optimizer to Lightning: the schedule's lr reaches both, and zero_grad clears both.
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 2e-3, 0.02]
    model(torch.randint(0, 320, (2, 8))).sum().backward()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert [g["lr"] for g in adamw.param_groups + muon.param_groups] == [1e-3, 1e-3, 0.01]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    state = optimizer.state_dict()
    fresh = optimizer_factory(cfg.optim)(model)
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh.optimizers[1].state[muon.param_groups[0]["params"][0]]["momentum_buffer"],
        muon.state[muon.param_groups[0]["params"][0]]["momentum_buffer"],
    )
    # Loading replaced the inner optimizers' group dicts: a schedule still reaches them.
    torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 0.25)
    assert [g["lr"] for o in fresh.optimizers for g in o.param_groups] == [5e-4, 5e-4, 0.005]
    fresh.state[muon.param_groups[0]["params"][0]] = {"momentum_buffer": torch.zeros(1)}  # as Lightning moves states
    assert len(fresh.optimizers[0].state) == len(adamw.state)  # written to Muon's, not to AdamW's


def test_rules_set_groups_by_kind_and_name_with_lr_scales():
    cfg = composed(
        "+optim.param_groups.embeddings={kinds:[embedding],lr_scale:0.5}",
        "+optim.param_groups.first_block={names:['blocks.0.*'],weight_decay:0.0,lr:1e-3}",
    )
    model = instantiate(cfg.model, vocab_size=320)
    optimizer = optimizer_factory(cfg.optim)(model)
    groups = {g.get("name"): g for g in optimizer.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["embeddings"]["params"]} == {"wte.weight", "wpe.weight"}
    assert groups["embeddings"]["lr"] == pytest.approx(cfg.optim.lr * 0.5)
    # vectors comes first among the rules: the first block's biases and gains stay there.
    assert all(names[id(p)].startswith("blocks.0.") and p.dim() == 2 for p in groups["first_block"]["params"])
    assert groups["first_block"]["lr"] == 1e-3 and groups["first_block"]["weight_decay"] == 0.0
    assert groups[None]["weight_decay"] == 0.1 and all(p.dim() == 2 for p in groups[None]["params"])


def test_an_mlp_as_wide_as_the_vocabulary_is_not_the_output_layer():
    from wgpt.models import GPT

    model = GPT(
        vocab_size=768, d_embed=192, n_layers=1, n_heads=2, max_seq_len=16, tie_embeddings=False
    )  # MLP 4 x 192 = 768
    kinds = parameter_kinds(model)
    assert kinds["lm_head.weight"] == "output" and kinds["blocks.0.mlp.fc.weight"] == "hidden_matrix"

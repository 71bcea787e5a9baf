"""Optimizers from config: any ``torch.optim`` class (or one of yours) by ``_target_``, with the
model's parameters split into groups by rules, and groups that take an optimizer of their own
(Muon on the hidden matrices, AdamW on the rest) combined into the one optimizer Lightning steps.

The ``optim`` node is the optimizer's partial (``_target_``, ``_partial_: true``, its arguments)
plus two keys of wgpt's, which the optimizer never sees: ``scheduler`` (the learning-rate
schedule) and ``param_groups``, named rules applied in order, the first that matches a
parameter taking it::

    param_groups:
      vectors: {kinds: [vector], weight_decay: 0.0}      # norm gains and biases: no decay
      embeddings: {kinds: [embedding], lr_scale: 0.5}     # any optimizer argument, and lr_scale
      hidden: {kinds: [hidden_matrix], optimizer: {_target_: torch.optim.Muon, _partial_: true, lr: 0.02}}

A rule selects by ``kinds`` (see ``parameter_kinds``) and/or ``names`` (``fnmatch`` patterns of
parameter names); parameters no rule takes form the default group, first.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import logging
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, ListConfig, OmegaConf

from wgpt.util.checks import check_arguments, check_number
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

OPTIM_KEYS = ("scheduler", "param_groups")  # wgpt's keys in the optim node, not the optimizer's
RULE_KEYS = ("kinds", "names", "lr_scale", "optimizer")  # a rule's own keys; the others are optimizer arguments
KINDS = ("hidden_matrix", "embedding", "output", "vector")


def parameter_kinds(model: nn.Module) -> dict[str, str]:
    """``{name: kind}`` for every trainable parameter (tied ones once, under their first name):

    - ``embedding``: the weight of an ``nn.Embedding`` (token and position tables);
    - ``output``: the weight of the layer that produces the logits (a Linear as wide as the
      vocabulary, when not tied to the embedding);
    - ``hidden_matrix``: any other parameter of 2 or more dimensions (attention and MLP weights);
    - ``vector``: parameters of fewer dimensions (norm gains, biases).
    """
    vocab = getattr(model, "config", {}).get("vocab_size") if isinstance(getattr(model, "config", None), dict) else None
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    # The last Linear as wide as the vocabulary: an MLP may be as wide too (a 768-token BPE, 192 x 4).
    heads = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and vocab and m.out_features == vocab]
    output = {id(heads[-1])} if heads else set()
    kinds = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embedding:
            kinds[name] = "embedding"
        elif id(p) in output:
            kinds[name] = "output"
        else:
            kinds[name] = "hidden_matrix" if p.dim() >= 2 else "vector"
    return kinds


class OptimizerFactory:
    """What the ``optim`` config builds: ``factory(model, fused)`` -> the run's optimizer.

    ``fused`` is whether fused kernels may be used (the device has them, and float16 clipping does
    not stand in the way); an optimizer class that takes ``fused`` gets it unless the config sets it.
    """

    def __init__(
        self, optimizer: Callable[..., torch.optim.Optimizer], rules: Mapping[str, Mapping[str, Any]] | None = None
    ):
        self.optimizer, self.rules = optimizer, dict(rules or {})

    def __call__(
        self, model: nn.Module, fused: bool = False, kinds: Mapping[str, str] | None = None
    ) -> torch.optim.Optimizer:
        """``kinds``: ``parameter_kinds`` of the model as built (FSDP may have wrapped it since:
        names are matched without its ``_fsdp_wrapped_module.`` parts)."""
        kinds = dict(kinds) if kinds is not None else parameter_kinds(model)
        params = {
            name.replace("_fsdp_wrapped_module.", ""): p for name, p in model.named_parameters() if p.requires_grad
        }
        taken: dict[str, list[str]] = {name: [] for name in self.rules}
        default: list[str] = []
        for name, p in params.items():
            # A name the model as built did not have (a wrapper's flattened parameter): by its dims.
            kind = kinds.get(name) or ("hidden_matrix" if p.dim() >= 2 else "vector")
            rule = next((r for r, spec in self.rules.items() if _matches(spec, name, kind)), None)
            (taken[rule] if rule is not None else default).append(name)
        # One optimizer per distinct factory: the default one with its groups, and one per rule that names its own.
        groups: dict[str, list[dict]] = {"": [{"params": [params[n] for n in default]}] if default else []}
        factories: dict[str, Callable] = {"": self.optimizer}
        for rule, names in taken.items():
            spec = self.rules[rule]
            if not names:
                if spec.get("optimizer") is not None:
                    raise WgptError(
                        f"optim.param_groups.{rule} matches no parameter of this model "
                        f"(kinds {list(spec.get('kinds') or [])}, names {list(spec.get('names') or [])}, "
                        "after the rules before it), so its optimizer would train nothing: use another optim"
                    )
                log.warning(
                    "optim.param_groups.%s matches no parameter of this model (after the rules before it): "
                    "it does nothing",
                    rule,
                )
                continue
            owner = rule if spec.get("optimizer") is not None else ""
            factories.setdefault(owner, spec.get("optimizer"))
            group = {"params": [params[n] for n in names], "name": rule}
            group.update({k: v for k, v in spec.items() if k not in RULE_KEYS})
            if spec.get("lr_scale") is not None:
                group["lr"] = float(group.get("lr", _argument(factories[owner], "lr"))) * float(spec["lr_scale"])
            groups.setdefault(owner, []).append(group)
        optimizers = [_build(factories[owner], group_list, fused) for owner, group_list in groups.items() if group_list]
        return optimizers[0] if len(optimizers) == 1 else CombinedOptimizer(optimizers)


def _matches(spec: Mapping[str, Any], name: str, kind: str) -> bool:
    kinds, names = spec.get("kinds"), spec.get("names")
    return (not kinds or kind in kinds) and (not names or any(fnmatch.fnmatchcase(name, n) for n in names))


def _argument(factory: Callable, key: str):
    keywords = getattr(factory, "keywords", {})
    if key in keywords:
        return keywords[key]
    target = getattr(factory, "func", factory)
    return inspect.signature(target).parameters[key].default


def _build(factory: Callable, groups: list[dict], fused: bool) -> torch.optim.Optimizer:
    target = getattr(factory, "func", factory)
    try:
        takes_fused = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes_fused = False
    keywords = getattr(factory, "keywords", {})
    excluded = keywords.get("foreach") or keywords.get("differentiable")  # torch refuses them with fused
    if takes_fused and keywords.get("fused") is None and not excluded:
        factory = functools.partial(factory, fused=fused)
    try:
        return factory(groups)
    except (ValueError, TypeError, RuntimeError) as e:  # e.g. Muon given a parameter that is not 2-D
        name = f"{target.__module__}.{target.__qualname__}"
        raise WgptError(
            f"optim: {name} refused its parameters ({str(e).strip().splitlines()[0]}): check optim.param_groups"
        ) from None


def default_optimizer(lr: float) -> OptimizerFactory:
    """conf/optim/adamw.yaml's optimizer at ``lr``, for using the module without a config."""
    adamw = functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    return OptimizerFactory(adamw, {"vectors": {"kinds": ["vector"], "weight_decay": 0.0}})


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one, for Lightning's single-optimizer loop (so gradient
    accumulation, clipping, precision and the schedule work unchanged).

    ``param_groups`` is the list of every inner group (the same dicts, read afresh each time: a
    schedule that sets ``lr`` on them sets it on the inner optimizers, also after a checkpoint
    replaced them), ``state`` their states; the state dict holds each inner optimizer's, so
    checkpoints keep both and resume exactly.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        # Optimizer.__init__ would add the parameters again: set up what it sets, from the inner ones.
        self.defaults = {}
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = OrderedDict(), OrderedDict()
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = OrderedDict(), OrderedDict()
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = (
            OrderedDict(),
            OrderedDict(),
        )
        self._zero_grad_profile_name = "Optimizer.zero_grad#CombinedOptimizer.zero_grad"

    @property
    def param_groups(self) -> list[dict]:
        # Read afresh each time: loading a state dict replaces an optimizer's group dicts.
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> "_States":
        return _States(self.optimizers)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def add_param_group(self, param_group: dict) -> None:
        raise WgptError(
            "a combined optimizer (optim=muon, or a param_groups rule with an optimizer) "
            "cannot take new parameter groups"
        )

    def __getstate__(self) -> dict:
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["optimizers"]
        if len(states) != len(self.optimizers):
            raise WgptError(
                f"the checkpoint holds {len(states)} optimizer states, this run has {len(self.optimizers)}: "
                "use its optim config"
            )
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return f"CombinedOptimizer({', '.join(type(o).__name__ for o in self.optimizers)})"


class _States(MutableMapping):
    """The inner optimizers' states as one mapping: reads find a parameter's state, writes go to the
    optimizer that owns the parameter (Lightning moves states between devices by rewriting them)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.owner = {id(p): o for o in optimizers for group in o.param_groups for p in group["params"]}

    def __getitem__(self, param):
        return self.owner[id(param)].state[param]

    def __setitem__(self, param, value) -> None:
        self.owner[id(param)].state[param] = value

    def __delitem__(self, param) -> None:
        del self.owner[id(param)].state[param]

    def __iter__(self):
        return (param for o in self.optimizers for param in o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)


def optimizer_layout(state_dict: Mapping[str, Any]) -> tuple:
    """What must match for an optimizer state to load into another optimizer: per optimizer, per
    group, its parameter count and setting names (not values: a resumed run may change an lr)."""
    if "optimizers" in state_dict:
        return tuple(optimizer_layout(inner) for inner in state_dict["optimizers"])
    ignored = {"params", "initial_lr", "name"}
    return (tuple((len(g["params"]), tuple(sorted(set(g) - ignored))) for g in state_dict["param_groups"]),)


def optimizer_factory(optim: DictConfig) -> OptimizerFactory:
    """The ``optim`` config as an ``OptimizerFactory``: its ``_target_`` partial (without wgpt's
    keys) and its ``param_groups`` rules, each rule's ``optimizer`` instantiated too."""
    from hydra.utils import instantiate

    # Plain containers (_convert_="all"): the arguments land in the optimizer's state dict, which
    # checkpoints keep and torch.load(weights_only=True) must read back.
    base = instantiate(OmegaConf.create({k: optim[k] for k in optim if k not in OPTIM_KEYS}), _convert_="all")
    rules = {}
    for name, rule in (optim.get("param_groups") or {}).items():
        if rule is None:  # a rule switched off: optim.param_groups.vectors=null
            continue
        plain = OmegaConf.to_container(rule, resolve=True)
        if plain.get("optimizer") is not None:
            plain["optimizer"] = instantiate(rule.optimizer, _convert_="all")
        rules[str(name)] = plain
    return OptimizerFactory(base, rules)


def check_optim(optim: DictConfig) -> None:
    """The ``param_groups`` rules, checked before any heavy work (the optimizers' own arguments are
    checked against their signatures by wgpt.core.validate)."""

    for name, rule in (optim.get("param_groups") or {}).items():
        if rule is None:
            continue
        key = f"optim.param_groups.{name}"
        if not isinstance(rule, DictConfig):
            raise WgptError(f"{key}={rule} is not a rule: give e.g. {key}={{kinds:[vector],weight_decay:0.0}}")
        for field in ("kinds", "names"):
            value = rule.get(field)
            if value is not None and not (isinstance(value, ListConfig) and all(isinstance(v, str) for v in value)):
                raise WgptError(f"{key}.{field}={value} is not a list of strings: give e.g. {key}.{field}=[...]")
        kinds = rule.get("kinds") or []
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise WgptError(f"{key}.kinds names {bad[0]!r}: choose from {', '.join(KINDS)}")
        if not kinds and not rule.get("names"):
            raise WgptError(f"{key} selects nothing: give it kinds (from {', '.join(KINDS)}) and/or names (patterns)")
        if rule.get("lr_scale") is not None:
            check_number(
                f"{key}.lr_scale", rule.lr_scale, float, lambda v: v >= 0, "a factor of the learning rate, 0 or more"
            )
        # Its optimizer arguments: those of its own optimizer, else the default one's.
        owner = rule.optimizer if rule.get("optimizer") is not None else optim
        extra = OmegaConf.create({"_target_": owner._target_, **{k: rule[k] for k in rule if k not in RULE_KEYS}})
        check_arguments(extra, key)

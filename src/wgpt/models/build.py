"""A model from its config node, for a vocabulary size: on the device, or on the meta device
(shapes only, no memory) so that the constructor's own checks run before anything heavy."""

from __future__ import annotations

import typing

from omegaconf import DictConfig

from wgpt.util.errors import WgptError

if typing.TYPE_CHECKING:
    import torch


def build_model(model_cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """The model of a ``model`` config node, for ``vocab_size`` tokens (the tokenizer's, padded)."""
    from hydra.utils import instantiate

    return instantiate(model_cfg, vocab_size=vocab_size)


def build_on_meta(model_cfg: DictConfig, vocab_size: int) -> torch.nn.Module:
    """Build the model on the meta device (shapes only, no memory): its constructor's checks run."""
    import torch
    from hydra.errors import InstantiationException

    try:
        with torch.device("meta"):
            return build_model(model_cfg, vocab_size)
    except InstantiationException as e:
        cause = e.__cause__ or e
        name = model_cfg.get("name", model_cfg._target_)
        raise WgptError(f"model {name}: {cause}: change the model.* values (see conf/model/{name}.yaml)") from None

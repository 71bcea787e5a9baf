"""A model from its config node, for a vocabulary size: on the device, or on the meta device
(shapes only, no memory) so that the constructor's own checks run before anything heavy."""

from __future__ import annotations

import typing

from omegaconf import DictConfig

from wgpt.util.errors import WgptError

if typing.TYPE_CHECKING:
    import torch


def build_model(model_cfg: DictConfig, vocab_size: int, eot_id: int | None = None) -> torch.nn.Module:
    """The model of a ``model`` config node, for ``vocab_size`` tokens (the tokenizer's, padded).
    ``eot_id``: the tokenizer's end-of-text id, given to a model with document masking on whose
    config leaves ``eot_id`` null."""
    from hydra.utils import instantiate

    extra = {}
    if model_cfg.get("document_mask") and model_cfg.get("eot_id") is None and eot_id is not None:
        extra["eot_id"] = eot_id
    return instantiate(model_cfg, vocab_size=vocab_size, **extra)


def build_on_meta(model_cfg: DictConfig, vocab_size: int, eot_id: int | None = None) -> torch.nn.Module:
    """Build the model on the meta device (shapes only, no memory): its constructor's checks run."""
    import torch
    from hydra.errors import InstantiationException

    try:
        with torch.device("meta"):
            return build_model(model_cfg, vocab_size, eot_id)
    except InstantiationException as e:
        cause = e.__cause__ or e
        name = model_cfg.get("name", model_cfg._target_)
        raise WgptError(f"model {name}: {cause}: change the model.* values (see conf/model/{name}.yaml)") from None

"""wgpt: a Hydra-composed LLM pre-training runner on PyTorch Lightning (see README.md).

The Python API (``wgpt.api``) is imported on first use, so ``import wgpt`` stays cheap (train.py
imports it before Hydra composes): ``wgpt.load_config``, ``wgpt.load_model_from_config``,
``wgpt.load_run``.
"""

API = ("load_config", "load_model_from_config", "load_run")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from wgpt import api

        return getattr(api, name)
    raise AttributeError(f"module 'wgpt' has no attribute {name!r}")

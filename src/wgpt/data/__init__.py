"""Tokenizer, token bins on disk, the batch sampler and the Lightning datamodule.

Imported lazily (``wgpt.data.DatasetLightningWrapper`` imports Lightning only when asked for), so
that tools needing only a tokenizer or a bin start in a fraction of a second.
"""

from importlib import import_module

_HOMES = {
    "DatasetLightningWrapper": "wgpt.data.datamodule",
    "DiskDataset": "wgpt.data.diskdataset",
    "generate_bin": "wgpt.data.diskdataset",
    "PDBSampler": "wgpt.data.pdbsampler",
    "get_splits": "wgpt.data.splits",
    "Tokenizer": "wgpt.tokenizers.r50k",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'wgpt.data' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)

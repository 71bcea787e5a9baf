"""ModelLightningWrapper inside Lightning fits too long for the unit tests (tiny model, CPU, in
process): each epoch draws a new order. The short fits: tests/unit/test_module.py."""

from functools import partial

import lightning as L
import pytest

from wgpt.data.datamodule import DatasetLightningWrapper
from wgpt.data.pdbsampler import PDBSampler

from helpers_fit import SEQ_LEN, tiny_module, toy_bins, trainer


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """helpers_fit's toy bins, made once for this module."""
    return toy_bins(tmp_path_factory.mktemp("toy"))


def test_each_epoch_draws_a_new_order(toy_dir):
    seen: dict[int, list] = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).append(batch[0][:, 0].tolist())

    sampler = partial(PDBSampler, seed=3)
    dm = DatasetLightningWrapper(
        {"toy": None}, seq_len=SEQ_LEN, batch_size=4, num_workers=0, data_dir=toy_dir, sampler=sampler
    )
    trainer(max_epochs=2, limit_val_batches=0, callbacks=[Record()]).fit(tiny_module(), datamodule=dm)
    assert seen[0] != seen[1]
    assert sorted(x for b in seen[0] for x in b) == sorted(x for b in seen[1] for x in b)  # same windows

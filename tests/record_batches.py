"""A callback for tests: appends what each rank trains on to <path>/rank<r>.jsonl."""

import json
from pathlib import Path

import lightning as L


class RecordBatches(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.path.mkdir(parents=True, exist_ok=True)
        # A window's first 8 tokens identify it: windows start at distinct offsets of real text.
        windows = [row[:8].tolist() for row in batch[0]]
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "windows": windows}
        with open(self.path / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

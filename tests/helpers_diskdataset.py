"""What tests/unit/test_diskdataset.py and tests/e2e/test_diskdataset_workers.py share: a toy dataset's bins."""

from pathlib import Path

import numpy as np

from wgpt.data.diskdataset import generate_bin

DOCS = [{"text": f"Document number {i}. " + "All the world's a stage. " * (i % 7 + 1)} for i in range(60)]


def toy_bins(data_dir: Path, tok) -> tuple[Path, np.ndarray]:
    """A 'toy' dataset with all three splits under ``data_dir``, and its expected token stream."""
    for split in ("train", "validation", "test"):
        generate_bin("toy", split, DOCS, tok, data_dir=data_dir, batch_size=7)
    expected = np.concatenate([np.array(ids) for ids in tok.encode([d["text"] for d in DOCS], eos=True)])
    return data_dir, expected

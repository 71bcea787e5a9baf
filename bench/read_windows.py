"""Random-window reads from a large bin: windows/s and peak RSS (memory must not grow with the bin).

    python bench/read_windows.py /tmp/bigbin --gigabytes 4

Writes a bin of random token ids (once; reused if present), opens it as a DiskDataset with a
shuffled window order, then reads windows in that random order for a fixed time, as a
DataLoader worker would. Reports windows/s, tokens/s and the process's peak RSS.
"""

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def make_bin(data_dir: Path, gigabytes: float) -> None:
    from wgpt.data.diskdataset import BinInfo, bin_path
    from wgpt.tokenizers.r50k import tokenizer_fingerprint

    path = bin_path("big", "train", data_dir)
    if BinInfo.read(path) is not None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng, total, chunk = np.random.default_rng(0), int(gigabytes * 2**30) // 2, 2**26
    with open(path, "wb") as f:
        for start in range(0, total, chunk):
            f.write(rng.integers(0, 50259, min(chunk, total - start), dtype=np.uint16).tobytes())
    BinInfo("big", "train", "uint16", total, 0, 0, tokenizer_fingerprint(), 50259, "random").write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--gigabytes", type=float, default=4.0)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    make_bin(args.data_dir, args.gigabytes)
    from wgpt.data.diskdataset import DiskDataset

    start = time.perf_counter()
    ds = DiskDataset("big", "train", args.seq_len, stride_ratio=1.0, data_dir=args.data_dir)
    ds.shuffle_indices(seed=0)
    opened = time.perf_counter() - start
    reads, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        for i in range(reads, reads + 1000):
            ds[i % len(ds)]
        reads += 1000
    seconds = time.perf_counter() - start
    size = ds.info.num_tokens * 2 / 2**30
    print(f"bin {size:.1f} GiB, {len(ds):,} windows of {args.seq_len}; open + shuffle {opened:.2f}s")
    print(
        f"{reads / seconds:,.0f} windows/s ({reads * args.seq_len / seconds / 1e6:.0f}M tokens/s) "
        f"over {reads:,} random windows"
    )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

"""generate_bin end to end vs the raw tokenizer limit, on the same corpus and the same cores.

    python bench/make_corpus.py /tmp/corpus --megabytes 200
    python bench/tokenize_speed.py /tmp/corpus

Three measurements, each in a fresh process (so peak RSS is its own):
  raw:  tiktoken's encode_ordinary_batch on every core, over texts already in memory (the limit;
        reading the files is not timed);
  bin:  generate_bin streaming the corpus through the `local` source (datasets' JSON reader),
        tokenizing and writing the bin: what `python process.py data=local` does;
  half: the same on the first half of the corpus, to show peak RSS does not grow with its size.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def raw(corpus: Path) -> dict:
    from wgpt.tokenizers.r50k import Tokenizer

    tok, tokens, seconds = Tokenizer(), 0, 0.0
    for shard in sorted(corpus.glob("*.jsonl")):
        texts = [json.loads(line)["text"] for line in open(shard)]
        for i in range(0, len(texts), 512):
            start = time.perf_counter()
            tokens += sum(map(len, tok.model.encode_ordinary_batch(texts[i : i + 512], num_threads=os.cpu_count())))
            seconds += time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds}


def bin_(corpus: Path, shards: int | None) -> dict:
    from wgpt.data.diskdataset import generate_bin
    from wgpt.data.sources import local
    from wgpt.tokenizers.r50k import Tokenizer

    files = sorted(corpus.glob("*.jsonl"))[:shards]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tmp) / "hf"))
        link_dir = Path(tmp) / "corpus"
        link_dir.mkdir()
        for f in files:
            (link_dir / f.name).symlink_to(f)
        train = local(str(link_dir), carve={"validation": 1, "test": 1})["train"]
        start = time.perf_counter()
        info = generate_bin("bench", "train", train, Tokenizer(), data_dir=tmp)
        seconds = time.perf_counter() - start
    return {"tokens": info.num_tokens, "seconds": seconds, "megabytes": sum(f.stat().st_size for f in files) / 2**20}


def child(kind: str, corpus: str, shards: str) -> None:
    result = raw(Path(corpus)) if kind == "raw" else bin_(Path(corpus), int(shards) or None)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run(kind: str, corpus: Path, shards: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(corpus), str(shards)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="a directory of .jsonl shards (bench/make_corpus.py)")
    args = parser.parse_args()
    shards = len(list(args.corpus.glob("*.jsonl")))
    results = {
        "raw": run("raw", args.corpus),
        "bin": run("bin", args.corpus),
        "half": run("bin", args.corpus, shards // 2),
    }
    limit = results["raw"]["tokens"] / results["raw"]["seconds"]
    print(f"cores: {os.cpu_count()}")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        size = f"{r['megabytes']:.0f} MB" if "megabytes" in r else "all text"
        print(
            f"{name:5s} {size:>9s}  {r['tokens'] / 1e6:7.1f}M tokens  {rate / 1e6:5.2f}M tokens/s "
            f"({rate / limit:4.2f} of raw)  peak RSS {r['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:])
    else:
        main()

"""Write a synthetic corpus of a given size as JSONL shards, from Shakespeare's plays (no download).

Each document is a random run of lines from a random play, with words occasionally swapped
between lines, so the text is real English but never one repeated string.

    python bench/make_corpus.py /tmp/corpus --megabytes 200
"""

import argparse
import json
import random
from pathlib import Path

from wgpt.data.shakespeare import markdown_to_text, play_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--megabytes", type=float, default=200)
    parser.add_argument("--shard-megabytes", type=float, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    plays = [markdown_to_text(p.read_text()).splitlines() for p in play_files().values()]
    args.out.mkdir(parents=True, exist_ok=True)
    total, shard, written = 0, 0, 0
    target, shard_target = args.megabytes * 2**20, args.shard_megabytes * 2**20
    f = open(args.out / f"shard-{shard:05d}.jsonl", "w")
    while total < target:
        lines = rng.choice(plays)
        start = rng.randrange(len(lines))
        doc = lines[start : start + rng.randint(20, 400)]
        words = " ".join(doc).split()
        for _ in range(len(words) // 50):  # perturb: swap a few words
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
        record = json.dumps({"text": "\n".join(doc) + "\n" + " ".join(words[:40])}) + "\n"
        f.write(record)
        total += len(record)
        written += len(record)
        if written >= shard_target:
            f.close()
            shard, written = shard + 1, 0
            f = open(args.out / f"shard-{shard:05d}.jsonl", "w")
    f.close()
    print(f"{total / 2**20:.0f} MB in {shard + 1} shards under {args.out}")


if __name__ == "__main__":
    main()

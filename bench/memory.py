"""Which preset fits where: parameters and the training-memory estimate per GPU (weights, gradients
and AdamW state, 16 B/param; activations not counted) with DDP and sharded with FSDP, as
`get_best_devices` and the start-up check compute it (wgpt.core.devices.training_memory_gib).

    python bench/memory.py [model=gpt2-medium ...]   # default: every preset in conf/model/
"""

import sys
from pathlib import Path

import torch

from wgpt.core.compose import compose_train_config
from wgpt.core.devices import training_memory_gib
from wgpt.data.tokenizer import tokenizer_spec
from wgpt.models import padded_vocab_size
from wgpt.models.build import build_model

ROOT = Path(__file__).resolve().parents[1]
SHARDS = (2, 4, 8)


def main(names: list[str]) -> None:
    header = ["preset", "parameters", "DDP GiB/GPU", *(f"FSDP x{n} GiB/GPU" for n in SHARDS)]
    rows = []
    for name in names:
        cfg = compose_train_config([f"model={name}"])
        with torch.device("meta"):
            model = build_model(cfg.model, padded_vocab_size(tokenizer_spec(cfg).vocab_size))
        params = sum(p.numel() for p in model.parameters())
        memory = [training_memory_gib(model)] + [training_memory_gib(model, shards=n) for n in SHARDS]
        rows.append([name, f"{params / 1e6:,.0f}M", *(f"{m:.1f}" for m in memory)])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    given = [a.removeprefix("model=") for a in sys.argv[1:]]
    main(given or sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))

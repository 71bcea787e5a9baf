"""A real 2-process DDP run (CPU, gloo) through train.py over a two-dataset mixture."""

import csv
import json
import random
from collections import defaultdict

from conftest import ROOT, run_cli


def corpus(path, word, n=6):
    """Text in which every 8 tokens are unique (random numbers) and every window holds `word`."""
    rng = random.Random(word)
    path.mkdir()
    for i in range(n):
        (path / f"{i}.txt").write_text(" ".join(f"{word} {rng.randrange(10**6)}" for _ in range(150)))


def test_ddp_ranks_see_disjoint_windows_and_the_same_steps(tmp_path):
    corpus(tmp_path / "alpha", "alpha")
    corpus(tmp_path / "beta", "beta", n=10)
    source = "{_target_:wgpt.data.sources.local,_partial_:true,path:%s,carve:{validation:1,test:1}}"
    result = run_cli(
        "train.py", "data=local", f"data.path={tmp_path / 'alpha'}", "~data.datasets.local",
        f"+data.datasets.alpha={source % (tmp_path / 'alpha')}", f"+data.datasets.beta={source % (tmp_path / 'beta')}",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_epochs=2",
        "trainer.max_steps=-1", "trainer.val_every_n_steps=4", "trainer.enable_progress_bar=false",
        "model.d_embed=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", "data.batch_size=4",
        "data.num_workers=0", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_root={tmp_path / 'out'}",
        "+callbacks.record._target_=record_batches.RecordBatches", f"+callbacks.record.path={tmp_path / 'seen'}",
        env={"PYTHONPATH": str(ROOT / "tests"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {r: [json.loads(line) for line in open(tmp_path / "seen" / f"rank{r}.jsonl")] for r in (0, 1)}
    assert [b["step"] for b in seen[0]] == [b["step"] for b in seen[1]]  # same number of steps, in step
    for epoch in (0, 1):
        windows = [tuple(w) for r in (0, 1) for b in seen[r] if b["epoch"] == epoch for w in b["windows"]]
        assert windows and len(windows) == len(set(windows)), f"a window was seen twice in epoch {epoch}"
    sources = defaultdict(set)
    for r in (0, 1):
        for b in seen[r]:
            sources[b["step"]].add(frozenset("alpha" if ALPHA & set(w) else "beta" for w in b["windows"]))
    assert all(len(s) == 1 and len(next(iter(s))) == 1 for s in sources.values()), "each step: one dataset, all ranks"

    (run_dir,) = (tmp_path / "out" / "gpt2-tiny").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "recent.ckpt"
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    assert rows and all(r["val_loss/alpha"] and r["val_loss/beta"] for r in rows)


ALPHA: set[int] = set()


def setup_module():
    from wgpt.data.tokenizer import Tokenizer

    ALPHA.update(Tokenizer().encode("alpha alpha"))  # the word with and without a leading space

"""The real `datasets` loading paths (streaming and not) on local files laid out like each hub dataset."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from wgpt.data.diskdataset import BinInfo, bin_path
from wgpt.data.prepare import ensure_prepared, prepare_dataset, unprepared_reason
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError

from conftest import ROOT


def docs(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document {i}: " + "Once upon a time there was a little robot. " * (i % 5 + 1) for i in range(n)]


def write_parquet(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def slim_pajama(root: Path) -> dict[str, list[str]]:
    """DKYoon/SlimPajama-6B: data/{split}-*.parquet with text, meta and a pandas index column."""
    texts = {"train": docs("train", 30), "validation": docs("val", 6), "test": docs("test", 5)}
    for split, rows in texts.items():
        write_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet",
            {
                "text": rows,
                "meta": [{"redpajama_set_name": "RedPajamaC4"}] * len(rows),
                "__index_level_0__": list(range(len(rows))),
            },
        )
    return texts


def tinystories(root: Path) -> dict[str, list[str]]:
    """roneneldan/TinyStories: data/{train,validation}-*.parquet with a text column."""
    train, validation = docs("story", 40), docs("val story", 8)
    write_parquet(root / "data" / "train-00000-of-00002.parquet", {"text": train[:25]})
    write_parquet(root / "data" / "train-00001-of-00002.parquet", {"text": train[25:]})
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", {"text": validation})
    return {"test": train[:3], "train": train[3:], "validation": validation}  # test: the first 3 (carve below)


def fineweb_edu(root: Path) -> dict[str, list[str]]:
    """HuggingFaceFW/fineweb-edu: config sample-10BT declared in README.md, sample/10BT/*.parquet."""
    root.mkdir(parents=True)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n"
    )
    rows = docs("web page", 50)
    write_parquet(
        root / "sample" / "10BT" / "000_00000.parquet",
        {
            "text": rows,
            "id": [f"<urn:{i}>" for i in range(50)],
            "dump": ["CC-MAIN-2024-10"] * 50,
            "url": [f"https://example.org/{i}" for i in range(50)],
            "score": [3.1] * 50,
            "int_score": [3] * 50,
        },
    )
    return {"validation": rows[:4], "test": rows[4:9], "train": rows[9:]}  # carve 4 + 5 below


LAYOUTS = {
    "slim-pajama": (slim_pajama, []),
    "tinystories": (tinystories, ["data.datasets.tinystories.carve.test=3"]),
    "fineweb-edu": (
        fineweb_edu,
        ["data.datasets.fineweb-edu.carve.validation=4", "data.datasets.fineweb-edu.carve.test=5"],
    ),
}


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_hub_dataset_configs_prepare_bins_equal_to_direct_tokenization(name, streaming, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    make, overrides = LAYOUTS[name]
    expected = make(tmp_path / "hub")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "process",
            overrides=[
                f"data={name}",
                f"data.datasets.{name}.path={tmp_path / 'hub'}",
                f"data.datasets.{name}.streaming={streaming}",
                *overrides,
            ],
        )
    (load,) = instantiate(cfg.data.datasets, _convert_="partial").values()
    infos = prepare_dataset(name, load, tmp_path / "bins")
    tok = Tokenizer()
    for split, texts in expected.items():
        tokens = np.fromfile(bin_path(name, split, tmp_path / "bins"), dtype=np.uint16)
        np.testing.assert_array_equal(tokens, np.concatenate([tok.encode(t, eos=True) for t in texts]))
        assert infos[split].num_documents == len(texts)
    assert unprepared_reason(name, load, tmp_path / "bins") is None


def test_limits_cut_each_split_short(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    from wgpt.data.sources import hub

    expected = slim_pajama(tmp_path / "hub")
    load = lambda: hub(str(tmp_path / "hub"), splits={s: s for s in ("train", "validation", "test")})  # noqa: E731
    infos = prepare_dataset("sp", load, tmp_path / "bins", max_docs=4)
    assert all(info.num_documents == 4 and info.max_docs == 4 for info in infos.values())
    tok = Tokenizer()
    first4 = np.concatenate([tok.encode(t, eos=True) for t in expected["train"][:4]])
    np.testing.assert_array_equal(np.fromfile(bin_path("sp", "train", tmp_path / "bins"), dtype=np.uint16), first4)
    infos = prepare_dataset("sp", load, tmp_path / "bins", max_tokens=100)
    assert all(info.num_tokens == 100 for info in infos.values())
    assert BinInfo.read(bin_path("sp", "test", tmp_path / "bins")).max_tokens == 100
    lengths = np.cumsum([len(tok.encode(t, eos=True)) for t in expected["train"]])
    assert infos["train"].num_documents == int(np.searchsorted(lengths, 100)) + 1  # whole ones and the cut one

    # A slice is not the whole dataset: asking for all of it prepares it again; asking again does not.
    assert ensure_prepared("sp", load, tmp_path / "bins") is True
    assert BinInfo.read(bin_path("sp", "train", tmp_path / "bins")).num_documents == len(expected["train"])
    assert ensure_prepared("sp", load, tmp_path / "bins") is False


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet"])
def test_local_files_in_each_format(suffix, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    from wgpt.data.sources import local

    texts = docs("mine", 12)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if suffix == ".txt":
        for i, text in enumerate(texts):
            (corpus / f"{i:03d}.txt").write_text(text)
    elif suffix == ".jsonl":
        import json

        (corpus / "a.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[:5]))
        (corpus / "b.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[5:]))
    else:
        write_parquet(corpus / "part-0.parquet", {"body": texts})
    field = "text" if suffix == ".txt" else "body"
    splits = local(str(corpus), text_field=field, carve={"validation": 2, "test": 1})
    assert [row["text"] for row in splits["validation"]] == texts[:2]
    assert [row["text"] for row in splits["test"]] == texts[2:3]
    assert [row["text"] for row in splits["train"]] == texts[3:]


def test_local_errors_name_the_bad_value(tmp_path):
    from wgpt.data.sources import local

    with pytest.raises(WgptError, match=f"data.path={tmp_path / 'nope'} does not exist"):
        local(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    with pytest.raises(WgptError, match="holds no .*files"):
        local(str(tmp_path / "empty"))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text('{"content": "x"}\n{"content": "y"}\n{"content": "z"}\n')
    with pytest.raises(WgptError, match="has no field 'text'.*content"):
        local(str(tmp_path / "j"), streaming=False)


def test_a_split_without_text_is_an_error_not_an_empty_bin(tmp_path):
    (tmp_path / "corpus").mkdir()
    for i in range(4):
        (tmp_path / "corpus" / f"{i}.txt").write_text("" if i else "only the validation file has text")
    from functools import partial

    from wgpt.data.sources import local

    load = partial(local, str(tmp_path / "corpus"), streaming=False)
    with pytest.raises(WgptError, match=r"the train split of 'mine' holds no text \(2 records were empty"):
        prepare_dataset("mine", load, tmp_path / "bins")
    assert not bin_path("mine", "train", tmp_path / "bins").exists()
    assert unprepared_reason("mine", load, tmp_path / "bins") is not None

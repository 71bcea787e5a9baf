"""DiskDataset and its bins: written, windowed, shuffled, refused when unfinished or foreign.
Loader worker processes reading it: tests/e2e/test_diskdataset_workers.py."""

import copy

import numpy as np
import pytest
import torch

from wgpt.data.diskdataset import BinInfo, DiskDataset, bin_path, generate_bin
from wgpt.data.splits import get_splits
from wgpt.tokenizers.r50k import Tokenizer
from wgpt.util.errors import WgptError

from helpers_diskdataset import DOCS, toy_bins


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture
def toy(tmp_path, tok):
    """A 'toy' dataset with all three splits, and its expected token stream."""
    return toy_bins(tmp_path, tok)


def test_generate_bin_writes_documents_separated_by_eos(toy, tok):
    data_dir, expected = toy
    path = bin_path("toy", "train", data_dir)
    assert path == data_dir / "toy" / "tokenized" / "train.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    np.testing.assert_array_equal(tokens, expected)
    info = BinInfo.read(path)
    assert (info.num_tokens, info.num_documents, info.dtype) == (len(expected), len(DOCS), "uint16")
    assert info.tokenizer == tok.fingerprint and info.vocab_size == len(tok)
    assert not list(path.parent.glob("*.tmp")), "temporary files must be renamed away"


def test_generate_bin_skips_empty_and_non_text_records(tmp_path, tok):
    data = [
        {"text": "kept"},
        {"text": ""},
        {"text": "   "},
        {"text": None},
        {"other": "x"},
        {"text": 5},
        {"text": "too"},
    ]
    info = generate_bin("messy", "train", data, tok, data_dir=tmp_path)
    assert (info.num_documents, info.skipped_documents) == (2, 5)
    tokens = np.fromfile(bin_path("messy", "train", tmp_path), dtype=np.uint16).tolist()
    assert tokens == tok.encode("kept", eos=True) + tok.encode("too", eos=True)


@pytest.mark.parametrize("seq_len,stride_ratio", [(8, 0.5), (8, 1.0), (7, 0.3), (16, 0.25), (5, 1.0)])
def test_length_counts_full_windows_only(toy, seq_len, stride_ratio):
    data_dir, expected = toy
    ds = DiskDataset("toy", "train", seq_len, stride_ratio, data_dir=data_dir)
    stride = max(1, int(seq_len * stride_ratio))
    starts = [s for s in range(0, len(expected), stride) if s + seq_len + 1 <= len(expected)]
    assert len(ds) == len(starts)
    # The last window ends inside the bin; one more stride would run past its end.
    last_x, last_y = ds[len(ds) - 1]
    assert starts[-1] + seq_len + 1 <= len(expected) < starts[-1] + stride + seq_len + 1
    np.testing.assert_array_equal(last_y.numpy(), expected[starts[-1] + 1 : starts[-1] + seq_len + 1])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_windows_equal_tokens_on_disk(toy):
    data_dir, expected = toy
    ds = DiskDataset("toy", "train", 10, 0.5, data_dir=data_dir)
    for i in (0, 1, 2, len(ds) // 2, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (10,)
        np.testing.assert_array_equal(x.numpy(), expected[i * 5 : i * 5 + 10])
        np.testing.assert_array_equal(y.numpy(), expected[i * 5 + 1 : i * 5 + 11])


def test_seeded_shuffle_is_a_reproducible_permutation(toy):
    data_dir, _ = toy
    a, b, c = (DiskDataset("toy", "train", 8, data_dir=data_dir) for _ in range(3))
    unshuffled = [a[i][0].tolist() for i in range(len(a))]
    a.shuffle_indices(seed=42)
    b.shuffle_indices(seed=42)
    c.shuffle_indices(seed=43)
    windows = lambda ds: [ds[i][0].tolist() for i in range(len(ds))]  # noqa: E731
    assert windows(a) == windows(b)
    assert windows(a) != windows(c)
    assert windows(a) != unshuffled
    assert sorted(windows(a)) == sorted(unshuffled)
    assert a.order.dtype == np.int32  # compact index array


def test_whole_bin_view_is_a_memmap(toy):
    data_dir, expected = toy
    tokens = DiskDataset("toy", "train", 8, data_dir=data_dir).tokens
    assert isinstance(tokens, np.memmap)
    np.testing.assert_array_equal(tokens, expected)


def test_get_splits_returns_all_three(toy):
    data_dir, _ = toy
    splits = get_splits("toy", 8, data_dir=data_dir)
    assert set(splits) == {"train", "validation", "test"}
    assert all(isinstance(ds, DiskDataset) and ds.split == name for name, ds in splits.items())


def test_missing_bin_is_refused(tmp_path):
    with pytest.raises(WgptError, match="no finished bin.*prepare the dataset 'nothing'"):
        DiskDataset("nothing", "train", 8, data_dir=tmp_path)


def test_bin_without_sidecar_counts_as_unfinished(toy):
    data_dir, _ = toy
    BinInfo.sidecar(bin_path("toy", "train", data_dir)).unlink()
    with pytest.raises(WgptError, match="no finished bin"):
        DiskDataset("toy", "train", 8, data_dir=data_dir)


def test_truncated_bin_is_refused(toy):
    data_dir, _ = toy
    path = bin_path("toy", "train", data_dir)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 6)
    with pytest.raises(WgptError, match="truncated.*prepare again"):
        DiskDataset("toy", "train", 8, data_dir=data_dir)


def test_bin_from_another_tokenizer_is_refused(toy, tok):
    """Same name, other mapping (e.g. a BPE trained again on other data): the fingerprint tells."""
    data_dir, _ = toy

    retrained = copy.copy(tok)
    retrained.fingerprint = "r50k-retrained"
    with pytest.raises(WgptError, match="was tokenized with r50k_base.*not r50k-retrained"):
        DiskDataset("toy", "train", 8, data_dir=data_dir, tokenizer=retrained)


def test_bin_shorter_than_one_window_is_refused(tmp_path, tok):
    generate_bin("short", "train", [{"text": "only a few tokens"}], tok, data_dir=tmp_path)
    with pytest.raises(WgptError, match="fewer than one window.*lower data.seq_len"):
        DiskDataset("short", "train", 64, data_dir=tmp_path)


@pytest.mark.parametrize("ratio", [0, -0.5, 1.5])
def test_stride_ratio_outside_unit_interval_is_refused(toy, ratio):
    data_dir, _ = toy
    with pytest.raises(WgptError, match=f"stride_ratio={ratio}"):
        DiskDataset("toy", "train", 8, ratio, data_dir=data_dir)

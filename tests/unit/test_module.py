"""ModelLightningWrapper and the checkpoint callbacks inside real Lightning fits (tiny model, CPU,
in this process). The longer fits: tests/e2e/test_module_fits.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wgpt.core.callbacks import BestCheckpoint, RecentCheckpoint, ValidateAtEnd
from wgpt.data.datamodule import DatasetLightningWrapper
from wgpt.data.diskdataset import DiskDataset, generate_bin
from wgpt.interop.checkpoint import SafeCheckpointIO
from wgpt.lightning.module import ModelLightningWrapper
from wgpt.models import GPT
from wgpt.tokenizers import tokenizer_from_record
from wgpt.tokenizers.bpe import BPETokenizer, train_bpe
from wgpt.tokenizers.r50k import Tokenizer

from helpers_fit import DOCS, SEQ_LEN, datamodule, tiny_module, toy_bins, trainer


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """helpers_fit's toy bins, made once for this module."""
    return toy_bins(tmp_path_factory.mktemp("toy"))


def text_bytes(tokenizer, targets) -> int:
    """UTF-8 bytes of the text that ``targets`` spell, specials left out, by decoding them: the
    toy text is ASCII, so no window boundary splits a character."""
    specials = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id}
    return len(tokenizer.decode([t for t in targets.tolist() if t not in specials]).encode("utf-8"))


def test_validation_loss_is_the_token_weighted_mean_over_all_windows(toy_dir):
    module = tiny_module()
    validation = DiskDataset("toy", "validation", SEQ_LEN, data_dir=toy_dir)
    assert len(validation) % 4 != 0  # an uneven last batch
    (metrics,) = trainer().validate(module, DataLoader(validation, batch_size=4), verbose=False)
    with torch.no_grad():
        losses = [F.cross_entropy(module(x[None])[0], y, reduction="sum") for x, y in validation]
    expected = torch.stack(losses).sum().item() / (len(validation) * SEQ_LEN)
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    # Bits per byte: the same summed loss over the bytes the targets spell (eos predictions counted
    # in the loss, 0 bytes), in bits. Each document ends in an eos, so some windows hold one.
    tokenizer = Tokenizer()
    num_bytes = sum(text_bytes(tokenizer, y) for _, y in validation)
    assert any(tokenizer.eos_token_id in y for _, y in validation)
    assert num_bytes > 2 * len(validation) * SEQ_LEN  # ~4 bytes per r50k token of English
    bpb = metrics["val_loss"] / math.log(2) * len(validation) * SEQ_LEN / num_bytes
    assert metrics["val_bpb"] == pytest.approx(bpb, rel=1e-5)
    assert "_token_bytes" not in module.state_dict()  # follows the device, never in a checkpoint


def test_val_bpb_follows_the_tokenizer_and_is_logged_per_dataset(tmp_path):
    # A byte-level BPE of 300 tokens trained on the toy text, bins made with it for two datasets,
    # and a model whose vocabulary is padded beyond the tokenizer's (as train.py pads it).
    tokenizer = BPETokenizer(train_bpe((d["text"] for d in DOCS), 300), "bpe300")
    assert len(tokenizer) == 300
    for name, docs in (("toy", DOCS[:7]), ("short", DOCS[7:9])):
        for split in ("train", "validation", "test"):
            generate_bin(name, split, docs, tokenizer, data_dir=tmp_path)
    module = tiny_module(vocab_size=320, tokenizer=tokenizer, dataset_names=["toy", "short"])
    dm = DatasetLightningWrapper(
        {"toy": None, "short": None},
        seq_len=SEQ_LEN,
        batch_size=4,
        num_workers=0,
        data_dir=tmp_path,
        tokenizer=tokenizer,
    )
    fit = trainer()
    fit.validate(module, datamodule=dm, verbose=False)
    metrics = {name: float(value) for name, value in fit.callback_metrics.items()}
    sums = {}
    for name, splits in dm.splits.items():
        validation = splits["validation"]
        with torch.no_grad():
            loss = sum(F.cross_entropy(module(x[None])[0], y, reduction="sum").item() for x, y in validation)
        sums[name] = (loss, sum(text_bytes(tokenizer, y) for _, y in validation))
        assert metrics[f"val_bpb/{name}"] == pytest.approx(loss / math.log(2) / sums[name][1], rel=1e-5)
    loss, num_bytes = (sum(column) for column in zip(*sums.values()))
    assert metrics["val_bpb"] == pytest.approx(loss / math.log(2) / num_bytes, rel=1e-5)
    assert metrics["val_bpb/toy"] != pytest.approx(metrics["val_bpb/short"], rel=1e-3)  # two sets, not one twice

    # The checkpoint keeps the tokenizer (plain values: it loads weights_only); rebuilt, it is the same one.
    fit.save_checkpoint(tmp_path / "validated.ckpt")
    checkpoint = torch.load(tmp_path / "validated.ckpt", weights_only=True)
    rebuilt = tokenizer_from_record(checkpoint["tokenizer"], source="test")
    assert rebuilt.fingerprint == tokenizer.fingerprint
    assert rebuilt.encode("Line 3: now") == tokenizer.encode("Line 3: now")
    assert not any("_token_bytes" in key for key in checkpoint["state_dict"])


class ScriptedValidation(ModelLightningWrapper):
    """Reports preset validation losses, to check what the callbacks keep."""

    def __init__(self, val_losses):
        super().__init__(GPT(vocab_size=64, d_embed=8, n_layers=1, n_heads=1, max_seq_len=SEQ_LEN), learning_rate=1e-3)
        self.val_losses = list(val_losses)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        tokens = batch[1].numel()  # of 3 bytes each: val_bpb = val_loss / ln 2 / 3
        self._val_sums[0] = torch.tensor([self.val_losses[0] * tokens, tokens, 3.0 * tokens], dtype=torch.float64)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.val_losses.pop(0)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return super().training_step((inputs % 64, targets % 64), batch_idx)


def test_best_keeps_the_lowest_validation_and_recent_the_end(toy_dir, tmp_path):
    module = ScriptedValidation([3.0, 1.0, 2.0])
    callbacks = [RecentCheckpoint(tmp_path, every_n_train_steps=2), BestCheckpoint(tmp_path, "start"), ValidateAtEnd()]
    # Validations after steps 2, 4 and 5 (the end, between two scheduled ones).
    trainer(
        max_steps=5,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        enable_checkpointing=True,
        plugins=[SafeCheckpointIO()],  # as train.py has it: it keeps recent-previous.ckpt
    ).fit(module, datamodule=datamodule(toy_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-start.ckpt",
        "best-start.safetensors",
        "recent-previous.ckpt",
        "recent.ckpt",
    ]
    best = torch.load(tmp_path / "best-start.ckpt", weights_only=True)
    recent = torch.load(tmp_path / "recent.ckpt", weights_only=True)
    # The one recent.ckpt replaced: step 4's (saved after its validation), not the end's first save of step 5.
    assert torch.load(tmp_path / "recent-previous.ckpt", weights_only=True)["global_step"] == 4
    assert best["global_step"] == 4 and best["best_metrics"]["val_loss"] == 1.0
    assert recent["global_step"] == 5 and recent["best_metrics"] == {**best["best_metrics"]}
    assert recent["best_metrics"]["val_ppl"] == pytest.approx(math.e)
    assert recent["best_metrics"]["val_bpb"] == pytest.approx(1.0 / math.log(2) / 3)
    assert recent["tokenizer"] == Tokenizer().record()
    assert recent["model_config"] == module.model.config


def test_step_budget_spanning_epochs_stops_on_the_step_and_validates(toy_dir):
    module = tiny_module()
    dm = datamodule(toy_dir, batch_size=16)
    fit = trainer(
        max_steps=40, max_epochs=-1, val_check_interval=100, check_val_every_n_epoch=None, callbacks=[ValidateAtEnd()]
    )
    fit.fit(module, datamodule=dm)
    assert fit.num_training_batches < 40  # more than one epoch was needed
    assert fit.global_step == 40 and fit.current_epoch >= 1
    assert module.best["step"] == 40 and math.isfinite(module.best["val_loss"])


def test_an_epoch_budget_resumed_in_its_last_epoch_still_ends_with_a_validation(toy_dir, tmp_path):
    """Lightning skips on_train_epoch_start for the epoch a run resumes in the middle of."""

    def fit(ckpt_path=None, **callbacks):
        module = tiny_module()
        run = trainer(
            max_epochs=2, val_check_interval=1000, check_val_every_n_epoch=None, limit_val_batches=2, **callbacks
        )
        run.fit(module, datamodule=datamodule(toy_dir, batch_size=16), ckpt_path=ckpt_path)
        return run, module

    saving = RecentCheckpoint(tmp_path, every_n_train_steps=1, filename="{step}")
    saving.save_top_k = -1  # keep every step's
    fresh, module = fit(callbacks=[ValidateAtEnd(), saving], enable_checkpointing=True)
    per_epoch = fresh.num_training_batches
    assert fresh.global_step == 2 * per_epoch and module.best["step"] == 2 * per_epoch
    middle = per_epoch + per_epoch // 2  # in the last epoch
    resumed, module = fit(ckpt_path=tmp_path / f"step={middle}.ckpt", callbacks=[ValidateAtEnd()])
    assert resumed.global_step == 2 * per_epoch
    assert module.best["step"] == 2 * per_epoch and math.isfinite(module.last_val_loss)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_z_loss_is_trained_and_logged_apart_from_the_cross_entropy(toy_dir, micro_batches):
    torch.manual_seed(0)
    eot = Tokenizer().eos_token_id  # documents masked apart too: the toy windows hold end-of-text tokens
    model = GPT(
        vocab_size=50304,
        d_embed=16,
        n_layers=1,
        n_heads=2,
        max_seq_len=SEQ_LEN,
        z_loss=0.5,
        document_mask=True,
        eot_id=eot,
    )
    module = ModelLightningWrapper(model, learning_rate=1e-2)
    fit = trainer(max_steps=3, log_every_n_steps=1, limit_val_batches=2, val_check_interval=3)
    fit.fit(module, datamodule=datamodule(toy_dir, micro_batches=micro_batches))
    metrics = {name: float(value) for name, value in fit.callback_metrics.items()}
    # log(Z) starts near log(50304) = 10.8: a term of 0.5 x 10.8^2 ~ 58, against a cross-entropy ~ 10.8.
    assert 20 < metrics["train_z_loss"] < 70
    assert 5 < metrics["train_loss"] < 12 and 5 < metrics["val_loss"] < 12  # the cross-entropy alone

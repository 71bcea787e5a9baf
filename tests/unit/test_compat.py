"""Compatibility of the public names and of saved runs, in-process (no launches, no training).

Written against the flat layout of src/wgpt (commit df5719a) before it is split into layered
subpackages: what users import, what conf/ and old runs name by ``_target_``, and what old
checkpoints name as their model class must keep working at the paths used today. The expected
signatures are hard-coded on purpose: a change to one is a change users see.
"""

import importlib
import importlib.util
import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object

from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "compat-run"
FIXTURE_TOKENIZER = "bpe320-c6058e15bd32ce75"  # fingerprint of the BPE the fixture's run trained

# Signatures as inspect.signature printed them at df5719a: (name, kind, default); REQUIRED for no
# default, and a function default by its name.
REQUIRED = "<required>"
POK = "POSITIONAL_OR_KEYWORD"
DISK_DATASET = [
    ("dataset_name", POK, REQUIRED),
    ("split", POK, REQUIRED),
    ("seq_len", POK, REQUIRED),
    ("stride_ratio", POK, 0.5),
    ("data_dir", POK, None),
    ("tokenizer", POK, None),
]
SIGNATURES = {
    "Tokenizer": [],
    "DiskDataset": DISK_DATASET,
    "generate_bin": [
        ("dataset_name", POK, REQUIRED),
        ("split", POK, REQUIRED),
        ("data", POK, REQUIRED),
        ("tokenizer", POK, REQUIRED),
        ("data_dir", POK, None),
        ("batch_size", POK, 512),
        ("source", POK, ""),
        ("max_docs", POK, None),
        ("max_tokens", POK, None),
    ],
    "PDBSampler": [
        ("datasets", POK, REQUIRED),
        ("batch_size", POK, REQUIRED),
        ("world_size", POK, REQUIRED),
        ("rank", POK, REQUIRED),
        ("shuffle", POK, True),
        ("proportional_sampling", POK, True),
        ("seed", POK, 0),
        ("weights", POK, None),
    ],
    "get_splits": [
        ("dataset_name", POK, REQUIRED),
        ("seq_len", POK, REQUIRED),
        ("stride_ratio", POK, 0.5),
        ("data_dir", POK, None),
        ("tokenizer", POK, None),
    ],
    "DatasetLightningWrapper": [
        ("datasets", POK, REQUIRED),
        ("seq_len", POK, REQUIRED),
        ("batch_size", POK, 32),
        ("num_workers", POK, 4),
        ("stride_ratio", POK, 0.5),
        ("data_dir", POK, None),
        ("sampler", POK, None),
        ("auto_prepare", POK, True),
        ("path", POK, None),
        ("weights", POK, None),
        ("tokenizer", POK, None),
        ("micro_batches", POK, 1),  # added at the end: every earlier call binds as before
    ],
    "ModelLightningWrapper": [
        ("model", POK, REQUIRED),
        ("optimizer", POK, None),
        ("learning_rate", POK, 0.0003),
        ("fused", POK, None),
        ("scheduler", POK, "<function one_cycle>"),
        ("dataset_names", POK, None),
        ("start_datetime", POK, None),
        ("compile", POK, False),
        ("tokenizer", POK, None),
        ("activation_checkpointing", POK, False),
    ],
    "get_best_devices": [
        ("model", POK, REQUIRED),
        ("max_gpus", POK, 1),
        ("min_vram", POK, 2.0),
        ("sharded", POK, False),
    ],
    "load_config": [("model", POK, "gpt2-tiny"), ("overrides", POK, ())],
    "load_model_from_config": [("cfg", POK, REQUIRED)],
    "load_run": [("path", POK, REQUIRED)],
    "Evaluator": [("model", POK, REQUIRED), ("device", POK, "cpu"), ("top_k", POK, (1, 5)), ("tokenizer", POK, None)],
}

# Every path a user imports each name from today: the short one first, then the module it lives in.
HOMES = {
    "Tokenizer": ["wgpt.data", "wgpt.data.tokenizer"],
    "DiskDataset": ["wgpt.data", "wgpt.data.diskdataset"],
    "generate_bin": ["wgpt.data", "wgpt.data.diskdataset"],
    "PDBSampler": ["wgpt.data", "wgpt.data.pdbsampler"],
    "get_splits": ["wgpt.data", "wgpt.data.splits"],
    "DatasetLightningWrapper": ["wgpt.data", "wgpt.data.datamodule"],
    "ModelLightningWrapper": ["wgpt.module"],
    "get_best_devices": ["wgpt.devices"],
    "load_config": ["wgpt", "wgpt.api"],
    "load_model_from_config": ["wgpt", "wgpt.api"],
    "load_run": ["wgpt", "wgpt.api"],
    "Evaluator": ["wgpt.evaluate"],
}
IMPORTS = [(module, name) for name, modules in HOMES.items() for module in modules]

# Model classes that checkpoints name today (model_class; older ones are inferred as GPT or Llama,
# and peek_model and the Hugging Face export default to Transformer): every old checkpoint needs them.
CHECKPOINT_MODEL_CLASSES = ["wgpt.models.gpt.GPT", "wgpt.models.llama.Llama", "wgpt.models.transformer.Transformer"]


def described(signature: inspect.Signature) -> list[tuple]:
    def default(p: inspect.Parameter):
        if p.default is inspect.Parameter.empty:
            return REQUIRED
        return f"<function {p.default.__name__}>" if inspect.isfunction(p.default) else p.default

    return [(p.name, p.kind.name, default(p)) for p in signature.parameters.values()]


def test_the_public_names_import_with_from_statements():
    """``from X import Y`` goes through the lazy ``__getattr__`` of wgpt and wgpt.data: a name the
    module no longer hands out fails here, also where importlib.import_module would still work."""
    from wgpt import load_config, load_model_from_config, load_run
    from wgpt.api import load_config as api_load_config
    from wgpt.api import load_model_from_config as api_load_model
    from wgpt.api import load_run as api_load_run
    from wgpt.data import DatasetLightningWrapper, DiskDataset, PDBSampler, Tokenizer, generate_bin, get_splits
    from wgpt.data.datamodule import DatasetLightningWrapper as DatasetLightningWrapper_
    from wgpt.data.diskdataset import DiskDataset as DiskDataset_
    from wgpt.data.diskdataset import generate_bin as generate_bin_
    from wgpt.data.pdbsampler import PDBSampler as PDBSampler_
    from wgpt.data.splits import get_splits as get_splits_
    from wgpt.data.tokenizer import Tokenizer as Tokenizer_
    from wgpt.devices import get_best_devices
    from wgpt.evaluate import Evaluator
    from wgpt.module import ModelLightningWrapper

    pairs = [
        (load_config, api_load_config),
        (load_model_from_config, api_load_model),
        (load_run, api_load_run),
        (DatasetLightningWrapper, DatasetLightningWrapper_),
        (DiskDataset, DiskDataset_),
        (generate_bin, generate_bin_),
        (PDBSampler, PDBSampler_),
        (get_splits, get_splits_),
        (Tokenizer, Tokenizer_),
    ]
    assert all(short is deep for short, deep in pairs)
    assert all(callable(x) for x in (get_best_devices, Evaluator, ModelLightningWrapper))


@pytest.mark.parametrize(("module", "name"), IMPORTS, ids=[f"{m}.{n}" for m, n in IMPORTS])
def test_each_public_name_keeps_its_signature_at_each_path(module, name):
    obj = getattr(importlib.import_module(module), name)
    assert described(inspect.signature(obj)) == SIGNATURES[name]


@pytest.mark.parametrize("name", [n for n, modules in HOMES.items() if len(modules) > 1])
def test_every_path_of_a_name_gives_the_same_object(name):
    """A shim that copied a class instead of re-exporting it would break isinstance checks."""
    first, *others = (getattr(importlib.import_module(m), name) for m in HOMES[name])
    assert all(other is first for other in others)


def test_get_best_devices_takes_the_seeds_arguments():
    """The seed spec's call, ``get_best_devices(model, max_gpus=1, min_vram=2.0)``, positionally too."""
    from wgpt.devices import get_best_devices

    bound = inspect.signature(get_best_devices).bind(torch.nn.Linear(1, 1), 1, 2.0)
    bound.apply_defaults()
    assert list(bound.arguments)[:3] == ["model", "max_gpus", "min_vram"]
    assert (bound.arguments["max_gpus"], bound.arguments["min_vram"]) == (1, 2.0)


def targets_in(node, where: str = "") -> list[tuple[str, str]]:
    """(``_target_`` value, where) of every node of a parsed YAML document, nested ones included."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                found.append((value, where or "<root>"))
            else:
                found += targets_in(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += targets_in(value, f"{where}[{i}]")
    return found


def yaml_targets(files: list[Path]) -> list[tuple[str, str]]:
    found = []
    for path in files:
        for target, where in targets_in(yaml.safe_load(path.read_text())):
            found.append((target, f"{path.relative_to(ROOT)}:{where}"))
    return sorted(found)


CONF_TARGETS = yaml_targets(sorted((ROOT / "conf").rglob("*.yaml")))
FIXTURE_TARGETS = yaml_targets([FIXTURE / ".hydra" / "config.yaml", FIXTURE / ".hydra" / "hydra.yaml"])


def resolve(target: str):
    """hydra.utils.get_object, as instantiate resolves it; skipped only for an optional package
    that is not installed (optuna for hparams_search), never for wgpt, torch or lightning."""
    top = target.split(".")[0]
    if top not in ("wgpt", "torch", "lightning", "hydra") and importlib.util.find_spec(top) is None:
        pytest.skip(f"{top} is not installed (an optional extra)")
    obj = get_object(target)
    assert callable(obj), f"{target} resolves to {obj!r}, which instantiate cannot call"
    return obj


def test_the_conf_walk_finds_every_kind_of_target():
    """The parametrized tests below are only as good as the walk: it must reach train.yaml's Hydra
    callbacks and nested nodes (the sampler inside data, optimizers inside param_groups). Checked by
    where, not by what: the restructure may rename the targets in conf/."""
    where = {w for _, w in CONF_TARGETS}
    assert {f"conf/train.yaml:hydra.callbacks.{c}" for c in ("run_dir_watch", "sweep_check", "sweep_summary")} <= where
    assert {"conf/data/common.yaml:sampler", "conf/optim/muon.yaml:param_groups.hidden_matrices.optimizer"} <= where
    assert len({w.split(":")[0] for w in where}) >= 25  # nearly every file under conf/ names something
    assert {t for t, _ in FIXTURE_TARGETS} >= {
        "wgpt.models.GPT",
        "wgpt.data.shakespeare.load_splits",
        "wgpt.sweep.SweepCheck",
    }


@pytest.mark.parametrize(("target", "where"), CONF_TARGETS, ids=[f"{w}={t}" for t, w in CONF_TARGETS])
def test_every_conf_target_resolves(target, where):
    resolve(target)


@pytest.mark.parametrize(("target", "where"), FIXTURE_TARGETS, ids=[f"{w}={t}" for t, w in FIXTURE_TARGETS])
def test_every_target_of_the_fixture_run_resolves(target, where):
    """An old run's config names today's paths: eval.py instantiates its data config as saved."""
    resolve(target)


@pytest.mark.parametrize("target", CHECKPOINT_MODEL_CLASSES)
def test_model_classes_that_checkpoints_name_still_import(target):
    assert issubclass(get_object(target), torch.nn.Module)


FIXTURE_CHECKPOINTS = sorted((FIXTURE / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("path", FIXTURE_CHECKPOINTS, ids=[p.name for p in FIXTURE_CHECKPOINTS])
def test_the_fixture_checkpoints_name_a_model_class_that_rebuilds_them(path):
    """Read as wgpt reads them (tensors and plain containers only), rebuilt by hand from the class
    they name: the class must import at that path and take the stored config and weights."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["model_class"] == "wgpt.models.gpt.GPT" and checkpoint["global_step"] == 8
    model = get_object(checkpoint["model_class"])(**checkpoint["model_config"])
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)  # strict: every weight name and shape still fits
    assert checkpoint["tokenizer"]["fingerprint"] == FIXTURE_TOKENIZER


def test_the_fixture_safetensors_names_the_same_model_class():
    from safetensors import safe_open

    (path,) = (FIXTURE / "checkpoints").glob("best-*.safetensors")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["wgpt_model_class"] == "wgpt.models.gpt.GPT"
    assert issubclass(get_object(metadata["wgpt_model_class"]), torch.nn.Module)


@pytest.mark.parametrize("source", ["run dir", "best ckpt", "recent ckpt", "safetensors"])
def test_load_run_reads_every_form_of_the_fixture(source):
    """wgpt.load_run, as a notebook calls it: the same model and tokenizer from each file of the run."""
    import wgpt

    checkpoints = FIXTURE / "checkpoints"
    path = {
        "run dir": FIXTURE,
        "best ckpt": next(checkpoints.glob("best-*.ckpt")),
        "recent ckpt": checkpoints / "recent.ckpt",
        "safetensors": next(checkpoints.glob("best-*.safetensors")),
    }[source]
    model, tokenizer, cfg = wgpt.load_run(path)
    assert type(model).__name__ == "GPT" and not model.training
    assert tokenizer.fingerprint == FIXTURE_TOKENIZER and len(tokenizer) == 320
    assert cfg is not None and cfg.model.d_embed == 16  # the run's .hydra/config.yaml, found beside
    text = "To be, or not to be"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), 320) and torch.isfinite(logits).all()


def test_the_fixture_runs_overrides_still_compose_the_same_model():
    """A run's overrides (its .hydra/overrides.yaml) are how it is resumed: they must still name
    config keys that exist and build a model its checkpoint fits."""
    import wgpt

    overrides = [
        o for o in yaml.safe_load((FIXTURE / ".hydra" / "overrides.yaml").read_text()) if not o.startswith("paths.")
    ]
    cfg = wgpt.load_config("gpt2-tiny", overrides=overrides)
    model = wgpt.load_model_from_config(cfg)
    checkpoint = torch.load(FIXTURE / "checkpoints" / "recent.ckpt", map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    saved = checkpoint["model_config"]
    assert {k: v for k, v in model.config.items() if k in saved} == saved
    added = {k: v for k, v in model.config.items() if k not in saved}  # knobs added since: at their defaults
    defaults = {k: p.default for k, p in inspect.signature(type(model)).parameters.items()}
    assert added == {k: defaults[k] for k in added}


def test_the_fixture_is_whole_and_small():
    """What the e2e tests rely on, and the size the fixture must keep (it lives in git)."""
    names = {p.relative_to(FIXTURE).as_posix() for p in FIXTURE.rglob("*") if p.is_file()}
    assert {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "checkpoints/recent.ckpt",
        "metrics.csv",
        "summary.json",
    } <= names
    assert sum((FIXTURE / n).stat().st_size for n in names) < 1_000_000
    summary = yaml.safe_load((FIXTURE / "summary.json").read_text())  # JSON is YAML
    assert summary["status"] == "completed" and summary["global_step"] == 8 and math.isfinite(summary["best_val_loss"])

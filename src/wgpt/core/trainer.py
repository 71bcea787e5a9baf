"""The ``trainer`` config group: ``trainer.*`` checked and turned into ``lightning.Trainer``
arguments. Lightning's own keys pass through (checked against its signature); wgpt's
(``max_devices``, ``val_every_n_steps``, ``activation_checkpointing``) and the ``auto`` values
of devices and precision are resolved here for this machine."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from typing import Any, Callable

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from wgpt.core.devices import (
    FP16_PRECISIONS,
    NvmlUnavailable,
    check_devices,
    check_fits_devices,
    cpu_precision,
    device_count,
    get_best_devices,
    training_memory_gib,
)
from wgpt.core.launch import external_launch
from wgpt.core.strategy import check_sharded_precision, fsdp_strategy
from wgpt.parallel.sharding import FSDP
from wgpt.util.checks import check_type, is_kind, type_hints
from wgpt.util.errors import WgptError

log = logging.getLogger("wgpt")

# wgpt's own trainer keys (translated before lightning.Trainer sees them) and the values it
# accepts beyond Lightning's.
WGPT_TRAINER_KEYS = {"max_devices", "val_every_n_steps", "activation_checkpointing"}
# lightning.Trainer arguments that wgpt sets itself, from other groups.
SET_BY_WGPT = {
    "logger": "the logger group (logger=...)",
    "callbacks": "the callbacks group",
    "plugins": "wgpt (its safe checkpoint IO)",
    "val_check_interval": "trainer.val_every_n_steps",
}
WGPT_TRAINER_VALUES = {"precision": {"auto"}, "devices": {"auto"}}


def _batches(v) -> bool:  # null (Lightning's default), a count, a fraction, or a whole float count
    return v is None or (is_kind(int, v) and v >= 0) or (isinstance(v, float) and (0 <= v <= 1 or v.is_integer()))


def _count_from(low: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (is_kind(int, v) and v >= low)


# Values that Lightning's types admit but Lightning itself rejects, some only once fit() starts
# (after the model is built and the data read): refused here with the config, in one line.
LIGHTNING_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        key: (_batches, "a number of batches (0 or more) or a fraction in [0.0, 1.0]")
        for key in (
            "limit_train_batches",
            "limit_val_batches",
            "limit_test_batches",
            "limit_predict_batches",
            "overfit_batches",
        )
    },
    "num_sanity_val_steps": (_count_from(-1, optional=True), "-1 (every batch), 0 (none) or a number of batches"),
    "check_val_every_n_epoch": (_count_from(1, optional=True), "null or a number of epochs, at least 1"),
    "reload_dataloaders_every_n_epochs": (_count_from(0), "0 (never) or a number of epochs"),
    "min_epochs": (_count_from(0, optional=True), "null or a number of epochs, 0 or more"),
    "min_steps": (_count_from(0, optional=True), "null or a number of optimizer steps, 0 or more"),
    "fast_dev_run": (lambda v: isinstance(v, bool) or _count_from(0)(v), "true, false or a number of batches"),
    "gradient_clip_algorithm": (lambda v: v in (None, "norm", "value"), "norm, value or null"),
    "deterministic": (lambda v: v in (None, True, False, "warn"), "true, false, warn or null"),
}


def check_trainer(trainer: DictConfig) -> None:
    """The trainer group: lightning.Trainer's keyword arguments (and wgpt's own), then the devices."""
    import lightning as L
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    params = inspect.signature(L.Trainer.__init__).parameters
    hints = type_hints(L.Trainer.__init__)
    for name in trainer:
        if name in WGPT_TRAINER_KEYS:
            continue
        if name in SET_BY_WGPT:
            raise WgptError(f"trainer.{name} is set by wgpt: use {SET_BY_WGPT[name]} instead")
        if name not in params:
            close = difflib.get_close_matches(str(name), list(params), n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise WgptError(f"trainer.{name} is not a lightning.Trainer argument{hint}: fix the key or remove it")
        value = trainer[name]
        if not (isinstance(value, str) and value in WGPT_TRAINER_VALUES.get(name, ())):
            check_type(f"trainer.{name}", value, hints.get(name))
        test, give = LIGHTNING_VALUES.get(name, (None, ""))
        if test is not None and not test(value):
            shown = "null" if value is None else value
            raise WgptError(f"trainer.{name}={shown} is out of range: give {give}")
    for name, registry in (("accelerator", AcceleratorRegistry), ("strategy", StrategyRegistry)):
        value = trainer.get(name, "auto")
        names = registry.available_accelerators() if name == "accelerator" else registry.available_strategies()
        if isinstance(value, str) and value not in ("auto", "gpu", *names):
            close = difflib.get_close_matches(value, list(names), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise WgptError(
                f"trainer.{name}={value} is not one Lightning knows: {hint}(choices: auto, {', '.join(sorted(names))})"
            )
    check_devices(str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto"))


def resolve_hardware(trainer_cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Trainer arguments with ``devices: auto``, ``precision: auto`` (or a GPU-only precision on a
    CPU) and ``strategy: fsdp`` made concrete for this machine, each choice logged in one line."""
    cfg = dict(trainer_cfg)
    max_devices = cfg.pop("max_devices", None)
    accelerator = str(cfg.get("accelerator", "auto"))
    check_devices(accelerator, cfg.get("devices", "auto"))
    sharded = cfg.get("strategy") == FSDP
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    check_named_gpus(trainer_cfg.get("devices", "auto"), model, wants_gpu, sharded)
    if cfg.get("devices", "auto") == "auto":
        cfg.update(auto_devices(model, accelerator, wants_gpu, max_devices, sharded))
    on_cpu = cfg.get("accelerator") == "cpu" or (
        accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    cfg["precision"] = concrete_precision(cfg.get("precision", "auto"), on_cpu)
    if sharded:
        cfg.update(sharded_arguments(cfg, model, on_cpu))
    return cfg


def check_named_gpus(devices, model: nn.Module, wants_gpu: bool, sharded: bool) -> None:
    """GPUs the user named (a count or ids, not ``auto``): is there room on each? Not in ranks a
    launcher started, which take what they were given."""
    launched = external_launch() or "LOCAL_RANK" in os.environ
    if wants_gpu and torch.cuda.is_available() and not launched and isinstance(devices, (int, list, tuple)):
        count = torch.cuda.device_count() if devices == -1 else devices
        check_fits_devices(model, list(range(count)) if isinstance(devices, int) else list(devices), sharded)


def auto_devices(model: nn.Module, accelerator: str, wants_gpu: bool, max_devices, sharded: bool) -> dict[str, Any]:
    """``devices: auto`` made concrete (with the accelerator and nodes it implies), in order: the
    ranks torchrun or srun started (their count per node and nodes); the GPUs rank 0 chose (in
    ranks Lightning started); the best ``max_devices`` GPUs by free memory; one CPU process when
    there is no GPU or NVML cannot query them. {} leaves Lightning's ``auto``."""
    launched = external_launch()
    if launched:
        log.info("%d processes per node on %d nodes, as the launcher started them", *launched)
        return {"devices": launched[0], "num_nodes": launched[1]}
    if wants_gpu and "LOCAL_RANK" in os.environ and "WGPT_GPU_IDS" in os.environ:
        # A DDP rank that Lightning started: take rank 0's choice. Choosing again would see
        # rank 0's memory in use and could put two ranks on one GPU.
        return {"accelerator": "gpu", "devices": [int(i) for i in os.environ["WGPT_GPU_IDS"].split(",")]}
    if wants_gpu:
        count = torch.cuda.device_count()
        try:
            ids = get_best_devices(model, max_gpus=max_devices or count, sharded=sharded)
        except NvmlUnavailable as e:
            if accelerator != "auto":
                log.info("%s: using the first %d GPU(s)", e, min(max_devices or count, count))
                return {"devices": min(max_devices or count, count)}
            log.warning("%s, so GPUs cannot be chosen: training on CPU (set trainer.accelerator=gpu to use them)", e)
            return {"accelerator": "cpu", "devices": 1}
        os.environ["WGPT_GPU_IDS"] = ",".join(map(str, ids))
        log.info(
            "Using GPU(s) %s: the most free memory; training needs ~%.1f GiB on each (weights, gradients "
            "and AdamW state%s; activations not counted)",
            ids,
            training_memory_gib(model, shards=len(ids) if sharded else 1),
            f", sharded {len(ids)} way(s)" if sharded else "",
        )
        return {"accelerator": "gpu", "devices": ids}
    if accelerator == "auto" and not torch.backends.mps.is_available():
        log.info("No CUDA GPU found: training on CPU")
        return {"accelerator": "cpu", "devices": 1}
    return {}


def concrete_precision(precision: str | int, on_cpu: bool) -> str | int:
    """``precision: auto`` is bf16-mixed on GPUs that have bfloat16 (Ampere and newer), the seed's
    16-mixed on older ones, and ``cpu_precision()`` on a CPU. On a CPU, float16 (the seed's
    precision 16) also becomes ``cpu_precision()``; an explicit bf16 or 32 request is kept."""
    if str(precision) == "auto":
        if on_cpu:
            chosen = cpu_precision()
        elif torch.cuda.is_available():
            # Native bf16 only (Ampere and newer): older GPUs emulate it, slower than float16.
            chosen = "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
        else:  # Apple GPUs: float32, the setting every op there supports
            chosen = "32-true"
        log.info("precision auto: %s on this %s", chosen, "CPU" if on_cpu else "GPU")
        return chosen
    if on_cpu and str(precision) in FP16_PRECISIONS:
        chosen = cpu_precision()
        log.info("precision %s is a GPU setting; this CPU run uses %s instead", precision, chosen)
        return chosen
    return precision


def sharded_arguments(cfg: dict[str, Any], model: nn.Module, on_cpu: bool) -> dict[str, Any]:
    """``strategy: fsdp``: wgpt's FSDP2 strategy, after checking the precision fits it."""
    check_sharded_precision(str(cfg["precision"]))
    shards = device_count(cfg.get("devices", "auto"), on_cpu) * int(cfg.get("num_nodes", 1))
    log.info(
        "FSDP2 (Lightning's ModelParallelStrategy): every block sharded over %d rank(s); ~%.1f GiB of weights, "
        "gradients and AdamW state per rank (activations not counted)",
        shards,
        training_memory_gib(model, shards),
    )
    # Lightning validates under torch.inference_mode on NCCL (no_grad on gloo, so CPU runs never
    # show it), and FSDP2 breaks when a forward under it comes first, as the sanity check's does
    # ("Inference tensors do not track version counter"): no_grad, as Lightning's FSDP1 gets.
    return {"strategy": fsdp_strategy(), "inference_mode": False}


def trainer_arguments(trainer_cfg: DictConfig, model) -> dict:
    """``lightning.Trainer`` keyword arguments from the trainer group, wgpt's own keys translated;
    without a ``trainer.profiler``, ``NoProfiler``."""
    args = OmegaConf.to_container(trainer_cfg)
    if args.get("profiler") is None:
        from wgpt.core.profiler import NoProfiler  # imports Lightning: not before the config is checked

        args["profiler"] = NoProfiler()
    args.pop("activation_checkpointing", None)  # the module's (ModelLightningWrapper), not the Trainer's
    # Validation is scheduled in optimizer steps, like checkpoints; Lightning counts batches.
    args["val_check_interval"] = args.pop("val_every_n_steps") * args.get("accumulate_grad_batches", 1)
    return resolve_hardware(args, model)


def with_step_batches(args: dict) -> tuple[dict, int]:
    """``trainer_arguments`` for a datamodule that loads an optimizer step's micro-batches as one
    batch (wgpt.lightning.steps): Lightning's own accumulation at 1, validation every as many of
    those batches as steps; and the micro-batches per step."""
    k = args.get("accumulate_grad_batches", 1)
    return {**args, "accumulate_grad_batches": 1, "val_check_interval": args["val_check_interval"] // k}, k

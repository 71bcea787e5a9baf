"""Which devices and precision a run gets: the best GPUs by free memory, or a CPU fallback."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

import torch
import torch.nn as nn

from wgpt.errors import WgptError

log = logging.getLogger("wgpt")

GIB = 2**30
FP16_PRECISIONS = {"16", "16-mixed", "16-true"}  # float16: a GPU format, slow or absent on CPUs


def training_memory_gib(model: nn.Module) -> float:
    """Lower bound of training memory: fp32 weights, gradients and AdamW's two moments (16 B/param)."""
    return 16 * sum(p.numel() for p in model.parameters()) / GIB


def get_best_devices(model: nn.Module, max_gpus: int = 1, min_vram: float = 2.0) -> list[int]:
    """Ids of up to ``max_gpus`` GPUs with the most free memory, each with at least
    ``min_vram`` GiB (or the model's estimated training memory, if larger) free."""
    import pynvml  # nvidia-ml-py

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise WgptError(f"cannot query the GPUs through NVML ({e}): set trainer.devices explicitly") from None
    try:
        free = {i: pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free / GIB
                for i in range(pynvml.nvmlDeviceGetCount())}  # fmt: skip
    finally:
        pynvml.nvmlShutdown()
    need = max(min_vram, training_memory_gib(model))
    ranked = sorted((i for i in free if free[i] >= need), key=lambda i: -free[i])
    if not ranked:
        have = ", ".join(f"GPU {i}: {f:.1f} GiB free" for i, f in free.items()) or "no GPUs"
        raise WgptError(f"no GPU has {need:.1f} GiB free ({have}): free memory or use a smaller model")
    return ranked[:max_gpus]


def cpu_precision() -> str:
    """What a CPU trains fastest in: bf16 autocast where it has bf16 matmul units, else fp32."""
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if fast_bf16 else "32-true"


def resolve_hardware(trainer_cfg: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Trainer arguments with ``devices: auto`` and a GPU-only precision made concrete.

    ``devices: auto`` on GPUs takes the best ``max_devices`` GPUs by free memory. On a CPU,
    float16 (the seed's default precision of 16) becomes ``cpu_precision()``, with one log line;
    an explicit bf16 or 32 request is kept.
    """
    cfg = dict(trainer_cfg)
    max_devices = cfg.pop("max_devices", None)
    accelerator = str(cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise WgptError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible: use trainer.accelerator=auto or cpu")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available())
    if on_gpu and cfg.get("devices", "auto") == "auto":
        cfg["accelerator"] = "gpu"
        if "LOCAL_RANK" in os.environ and "WGPT_GPU_IDS" in os.environ:
            # A DDP child that Lightning started: take rank 0's choice. Choosing again would see
            # rank 0's memory in use and could put two ranks on one GPU.
            cfg["devices"] = [int(i) for i in os.environ["WGPT_GPU_IDS"].split(",")]
        else:
            cfg["devices"] = get_best_devices(model, max_gpus=max_devices or torch.cuda.device_count())
            os.environ["WGPT_GPU_IDS"] = ",".join(map(str, cfg["devices"]))
            log.info("Using GPU(s) %s (most free memory)", cfg["devices"])
    precision = str(cfg.get("precision", "32-true"))
    if on_cpu and precision in FP16_PRECISIONS:
        cfg["precision"] = cpu_precision()
        log.info("precision %s is a GPU setting; this CPU run uses %s instead", precision, cfg["precision"])
    return cfg


def reuse_freed_host_memory() -> None:
    """Stop glibc from handing large freed blocks back to the OS after every step.

    Each step allocates and frees the (tokens x vocab) logits, hundreds of MB. By default glibc
    serves blocks over 32 MB with mmap and unmaps them on free, so every step page-faults them in
    again; on CPU runs that costs ~30% of the time (1,170 vs 805 tokens/s for gpt2-tiny).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(2**30))
    libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))

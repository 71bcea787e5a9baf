"""Which devices and precision a run gets: the best GPUs by free memory, or a CPU fallback."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops

from wgpt.core.launch import external_launch
from wgpt.util.errors import WgptError
from wgpt.util.files import atomic_write_text

log = logging.getLogger("wgpt")

GIB = 2**30
FP16_PRECISIONS = {"16", "16-mixed", "16-true"}  # float16: a GPU format, slow or absent on CPUs


def training_memory_gib(model: nn.Module, shards: int = 1) -> float:
    """Lower bound of one device's training memory: fp32 weights, gradients and AdamW's two moments
    (16 B/param), activations not counted. Sharded ``shards`` ways (FSDP), each device holds its
    share of those, plus what is gathered in full (bf16 parameters and gradients, 4 B/param): the
    parameters outside the blocks (embeddings, output layer), which FSDP keeps gathered for the
    whole step, and two blocks (the one running and the next, fetched meanwhile)."""
    params = sum(p.numel() for p in model.parameters())
    if shards <= 1:
        return 16 * params / GIB
    blocks = getattr(model, "blocks", None)
    if blocks:
        sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
        gathered = params - sum(sizes) + 2 * max(sizes)
    else:
        gathered = params
    return (16 * params / shards + 4 * gathered) / GIB


class NvmlUnavailable(WgptError):
    """NVML (the driver's GPU query library) cannot be loaded or started."""


def free_gpu_memory() -> dict[int, float]:
    """Free memory (GiB) of each GPU this process may use, keyed by CUDA device ordinal.

    NVML numbers every GPU of the machine; CUDA numbers those in ``CUDA_VISIBLE_DEVICES``, in its
    order. Both are PCI-bus order on machines with one GPU model (else set CUDA_DEVICE_ORDER=PCI_BUS_ID).
    """
    import pynvml  # nvidia-ml-py, a dependency: it loads the driver's libnvidia-ml at nvmlInit

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:  # no driver library (no GPU), or a driver that will not answer
        raise NvmlUnavailable(f"NVML is unavailable ({e})") from None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        free = [pynvml.nvmlDeviceGetMemoryInfo(h).free / GIB for h in handles]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return dict(enumerate(free))
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        ordinals: dict[int, float] = {}
        for ordinal, entry in enumerate(e.strip() for e in visible.split(",")):
            index = _nvml_index(entry, uuids)
            if index is None:  # CUDA ignores the entries from the first one it cannot match
                break
            ordinals[ordinal] = free[index]
        return ordinals
    finally:
        pynvml.nvmlShutdown()


def gpu_names_and_driver() -> tuple[list[str], str | None]:
    """The machine's GPU names and driver version from NVML, which starts no CUDA context;
    ([], None) where NVML cannot start (no GPU or no driver)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return [], None
    try:
        names = [
            _text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
        return names, _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        return [], None
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _nvml_index(entry: str, uuids: list[str]) -> int | None:
    """The NVML index of one CUDA_VISIBLE_DEVICES entry: an index, a UUID, or a UUID's unique prefix."""
    if entry.isdigit():
        return int(entry) if int(entry) < len(uuids) else None
    matches = [i for i, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def get_best_devices(model: nn.Module, max_gpus: int = 1, min_vram: float = 2.0, sharded: bool = False) -> list[int]:
    """Ids of up to ``max_gpus`` GPUs with the most free memory, each with at least
    ``min_vram`` GiB (or the model's estimated training memory, if larger) free.

    ``sharded`` (FSDP): each GPU needs only its share of the model's training memory, which
    shrinks as GPUs are added; the most GPUs (up to ``max_gpus``) that fit are chosen.

    Raises WgptError when none qualifies, NvmlUnavailable when the GPUs cannot be queried.
    """
    free = free_gpu_memory()
    by_free = sorted(free, key=lambda i: (-free[i], i))
    for count in range(min(max_gpus, len(by_free)), 0, -1) if sharded else [1]:
        need = max(min_vram, training_memory_gib(model, shards=count))
        ranked = [i for i in by_free if free[i] >= need]
        if len(ranked) >= count:
            return ranked[:count] if sharded else ranked[:max_gpus]
    have = ", ".join(f"GPU {i}: {f:.1f} GiB free" for i, f in free.items()) or "no GPUs"
    need = max(min_vram, training_memory_gib(model, shards=min(max_gpus, len(free)) if sharded else 1))
    sharding = f" sharded over {min(max_gpus, len(free))} GPU(s)" if sharded else ""
    advice = "set trainer.max_devices higher, " if sharded and max_gpus < len(free) else ""
    advice += "" if sharded else "shard it with trainer.strategy=fsdp, "
    raise WgptError(
        f"no GPU has {need:.1f} GiB free for this {training_memory_gib(model):.1f} GiB model{sharding} ({have}): "
        f"free some GPU memory, {advice}use a smaller model, or set trainer.accelerator=cpu"
    )


def check_fits_devices(model: nn.Module, devices: list[int], sharded: bool) -> float:
    """The estimated training memory per GPU of ``devices`` (explicit ids); a WgptError naming the
    first GPU without that much free. Skipped (returns the estimate) when NVML cannot tell."""
    need = training_memory_gib(model, shards=len(devices) if sharded else 1)
    try:
        free = free_gpu_memory()
    except NvmlUnavailable:
        return need
    short = [i for i in devices if i in free and free[i] < need]
    if short:
        how = f"sharded over {len(devices)} GPUs" if sharded else "with DDP (a whole copy per GPU)"
        raise WgptError(
            f"GPU {short[0]} has {free[short[0]]:.1f} GiB free, but this model needs ~{need:.1f} GiB per GPU {how}: "
            + ("add GPUs, " if sharded else "shard it with trainer.strategy=fsdp, ")
            + "use a smaller model, or free GPU memory"
        )
    return need


def check_devices(accelerator: str, devices: Any) -> None:
    """A GPU asked for where there is none, or more devices than this machine has: a WgptError
    before any work (Lightning would find out after the model is built, in a traceback)."""
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise WgptError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible: use trainer.accelerator=auto or cpu"
        )
    if devices == "auto" or external_launch() or accelerator not in ("auto", "cpu", "gpu", "cuda"):
        return  # torchrun or srun chose the devices; other accelerators count their own
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    have, kind = (torch.cuda.device_count(), "GPUs") if on_gpu else (os.cpu_count() or 1, "CPU cores")
    try:
        if isinstance(devices, str) and "," in devices:  # Lightning's "0,1"
            devices = [int(d) for d in devices.split(",") if d.strip()]
        elif isinstance(devices, str) and devices.lstrip("-").isdigit():
            devices = int(devices)
    except ValueError:
        raise WgptError(
            f"trainer.devices={devices} is not a device count or list: give auto, a number, or GPU ids like [0,1]"
        ) from None
    if isinstance(devices, (str, bool, float)):
        raise WgptError(
            f"trainer.devices={devices} is not a device count or list: give auto, a number, or GPU ids like [0,1]"
        )
    if not isinstance(devices, int) and not on_gpu:
        raise WgptError(
            f"trainer.devices={list(devices)} lists device ids, which only GPUs have: give a number of CPU processes"
        )
    if not isinstance(devices, int):
        ids = list(devices)
        outside = [i for i in ids if not isinstance(i, int) or not 0 <= i < have]
        if on_gpu and outside:
            raise WgptError(
                f"trainer.devices={ids} names GPU {outside[0]}, but this machine has {have} GPU(s) (ids 0-{have - 1}): "
                "give ids that exist, or trainer.devices=auto"
            )
        devices = len(ids)
    if devices == -1:  # Lightning's "all of them"
        return
    if devices < 1:
        raise WgptError(f"trainer.devices={devices} is out of range: give at least 1, -1 for all, or auto")
    if devices > have:
        raise WgptError(
            f"trainer.devices={devices} but this machine has {have} {kind}: "
            f"give at most {have}, or trainer.devices=auto"
        )


def device_count(devices: Any, on_cpu: bool) -> int:
    """How many devices per node a ``trainer.devices`` value stands for (Lightning's meaning)."""
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices != -1:
        return devices
    if not isinstance(devices, (int, str)):
        return len(devices)
    return 1 if on_cpu else max(torch.cuda.device_count(), 1)  # auto (CPU: one process) or -1


def cpu_precision() -> str:
    """What a CPU trains fastest in: bf16 autocast where it has bf16 matmul units, else fp32."""
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if fast_bf16 else "32-true"


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


def enable_tf32(enabled: bool = True) -> bool:
    """TF32 matmuls (float32 range, 10-bit mantissa; ~8x the float32 rate) on Ampere and newer
    GPUs, where they exist. Returns whether they are on."""
    if not (enabled and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8):
        return False
    torch.set_float32_matmul_precision("high")
    return True


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a Lightning precision setting runs its matmuls in."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision in FP16_PRECISIONS:
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def peak_flops(
    device: torch.device, dtype: torch.dtype, largest_matmul: tuple[int, int, int] | None = None
) -> float | None:
    """The FLOP/s that MFU divides by: a GPU's datasheet figure (Lightning's table, TF32 when it
    is on), or this CPU's measured matmul rate (``cpu_peak_flops``, up to ``largest_matmul``, the
    (rows, in, out) of the model's largest matmul). None for unknown GPUs."""
    if device.type == "cpu":
        return cpu_peak_flops(dtype, largest_matmul=largest_matmul)
    if device.type == "cuda" and "h200" in torch.cuda.get_device_name(device).lower():
        # Lightning's table misses "NVIDIA H200" and lists H200 NVL/SXM1 at sparse rates. The H200
        # has the H100 SXM's compute (dense bf16 989 TFLOP/s) with more and faster memory.
        tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
        return H100_SXM_DENSE["tfloat32" if tf32 else dtype] if (tf32 or dtype in H100_SXM_DENSE) else None
    return get_available_flops(device, dtype)


H100_SXM_DENSE = {
    torch.float64: 33.5e12,
    torch.float32: 66.9e12,
    "tfloat32": 494.7e12,
    torch.bfloat16: 989.4e12,
    torch.float16: 989.4e12,
}


def cpu_peak_flops(
    dtype: torch.dtype = torch.float32, seconds: float = 0.25, largest_matmul: tuple[int, int, int] | None = None
) -> float:
    """This CPU's matmul peak with this process's threads and ``dtype`` (float32, or autocast's
    bf16/fp16): the best rate of a few sizes, squares of 512 to 2048 and ``largest_matmul`` (rows,
    in, out), each timed for ``seconds``. One size under-reads: a CPU reaches its best rate only
    on matmuls large enough to hide memory traffic, which a model's output layer can be and a
    1024^3 product is not. Measured once and cached per CPU model, thread count, torch version,
    dtype and largest matmul in ~/.cache/wgpt/peak_flops.json (XDG_CACHE_HOME)."""
    sizes = [(n, n, n) for n in (512, 1024, 2048)]
    if largest_matmul is not None:
        largest_matmul = tuple(int(d) for d in largest_matmul)
        sizes = [s for s in sizes if s[0] * s[1] * s[2] <= largest_matmul[0] * largest_matmul[1] * largest_matmul[2]]
        sizes.append(largest_matmul)
    key = f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype} | up to {sizes[-1]}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wgpt" / "peak_flops.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    peak = max(_measure_matmul_flops(dtype, seconds, *size) for size in sizes)
    log.info("Measured this CPU's matmul peak: %.1f GFLOP/s (%s)", peak / 1e9, key)
    try:  # write-then-rename: a concurrent reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({**known, key: peak}, indent=1), private=True)
    except OSError as e:
        log.warning("Could not cache the CPU's peak FLOP/s in %s: %s", cache, e)
    return peak


def _measure_matmul_flops(dtype: torch.dtype, seconds: float, rows: int, inner: int, out: int) -> float:
    # The training path's op: F.linear on float32 weights, under autocast for bf16/fp16.
    # A generator of its own: drawing from the global one would shift a run's random stream (its
    # dropout masks) by whether the peak was cached, and a continued run would diverge from its start.
    generator = torch.Generator().manual_seed(0)
    a, w = torch.randn(rows, inner, generator=generator), torch.randn(out, inner, generator=generator)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))
    best, start = 0.0, time.perf_counter()
    with autocast, torch.no_grad():
        F.linear(a, w)  # warm-up: thread pool, kernel selection
        while time.perf_counter() - start < seconds or best == 0.0:
            t = time.perf_counter()
            F.linear(a, w)
            best = max(best, 2 * rows * inner * out / (time.perf_counter() - t))
    return best


def largest_matmul(model: nn.Module, rows: int) -> tuple[int, int, int] | None:
    """(rows, in, out) of the model's largest linear layer applied to ``rows`` tokens."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    if not shapes:
        return None
    inner, out = max(shapes, key=lambda s: s[0] * s[1])
    return rows, inner, out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

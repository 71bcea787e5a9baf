"""Device choice: the best GPUs by free memory (NVML faked at its boundary: no GPU here) and the CPU fallbacks."""

import logging
import os
import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from wgpt.core.devices import GIB, NvmlUnavailable, cpu_precision, get_best_devices
from wgpt.core.strategy import fsdp_strategy, runs_step_batches
from wgpt.core.trainer import resolve_hardware, trainer_arguments, with_step_batches
from wgpt.util.errors import WgptError

MODEL = torch.nn.Linear(4, 4)  # needs far less than min_vram
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")


@pytest.fixture(autouse=True)
def own_environment(monkeypatch):
    """A copy of the environment for each test: resolve_hardware records its GPU choice there
    (WGPT_GPU_IDS), which would otherwise reach every later run this worker starts."""
    monkeypatch.setattr(os, "environ", dict(os.environ))


class FakeNvml(types.ModuleType):
    """pynvml with GPUs that have the given free memory (GiB), or no driver library at all."""

    class NVMLError(Exception):
        pass

    def __init__(self, free_gib: list[float] | None):
        super().__init__("pynvml")
        self.free_gib, self.initialized = free_gib, False

    def nvmlInit(self):
        if self.free_gib is None:
            raise self.NVMLError("NVML Shared Library Not Found")
        self.initialized = True

    def nvmlShutdown(self):
        self.initialized = False

    def nvmlDeviceGetCount(self):
        return len(self.free_gib)

    def nvmlDeviceGetHandleByIndex(self, i):
        assert self.initialized and 0 <= i < len(self.free_gib)
        return i

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(free=int(self.free_gib[handle] * GIB), total=80 * GIB)

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle:08x}-aaaa-bbbb-cccc-dddddddddddd"


@pytest.fixture
def gpus(monkeypatch):
    """Install a fake NVML with these free memories; CUDA_VISIBLE_DEVICES unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(free_gib):
        fake = FakeNvml(free_gib)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def test_gpus_are_sorted_by_free_memory(gpus):
    gpus([10.0, 70.0, 40.0, 5.0])
    assert get_best_devices(MODEL, max_gpus=4, min_vram=2.0) == [1, 2, 0, 3]
    assert get_best_devices(MODEL) == [1]  # the seed's default: one GPU


def test_gpus_under_min_vram_are_dropped(gpus):
    gpus([10.0, 70.0, 40.0, 5.0])
    assert get_best_devices(MODEL, max_gpus=4, min_vram=20.0) == [1, 2]


def test_max_gpus_caps_the_choice(gpus):
    gpus([10.0, 70.0, 40.0, 5.0])
    assert get_best_devices(MODEL, max_gpus=2) == [1, 2]


def test_the_models_training_memory_raises_the_bar(gpus):
    gpus([3.0, 1.5])
    big = torch.nn.Linear(16384, 16384, bias=False)  # 268M parameters: 4 GiB at 16 bytes each
    with pytest.raises(WgptError, match=r"no GPU has 4\.0 GiB free .*GPU 0: 3\.0 GiB free, GPU 1: 1\.5 GiB free"):
        get_best_devices(big, max_gpus=2)


def test_no_qualifying_gpu_is_one_clear_error(gpus):
    gpus([1.0, 0.5])
    with pytest.raises(WgptError, match=r"no GPU has 2\.0 GiB free") as error:
        get_best_devices(MODEL)
    assert "\n" not in str(error.value) and "trainer.accelerator=cpu" in str(error.value)


def test_missing_nvml_is_reported_as_such(gpus):
    gpus(None)
    with pytest.raises(NvmlUnavailable, match="NVML Shared Library Not Found"):
        get_best_devices(MODEL)


def test_ids_are_cuda_ordinals_under_cuda_visible_devices(gpus, monkeypatch):
    gpus([10.0, 70.0, 40.0, 5.0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0")  # CUDA ordinal 0 is NVML's GPU 3, ordinal 1 is GPU 0
    assert get_best_devices(MODEL, max_gpus=2) == [1, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000002,GPU-00000001-aaaa-bbbb-cccc-dddddddddddd")
    assert get_best_devices(MODEL, max_gpus=2) == [1, 0]  # by (prefix of) UUID: GPU 1 has 70 GiB


def test_auto_takes_the_best_gpus_up_to_max_devices(gpus, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="wgpt")
    gpus([10.0, 70.0, 40.0, 5.0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WGPT_GPU_IDS", raising=False)
    args = resolve_hardware(
        {"accelerator": "auto", "devices": "auto", "max_devices": 2, "precision": "16-mixed"}, MODEL
    )
    assert args == {"accelerator": "gpu", "devices": [1, 2], "precision": "16-mixed"}
    assert "Using GPU(s) [1, 2]: the most free memory" in caplog.text
    # A DDP rank that Lightning starts later takes rank 0's choice rather than choosing again.
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpus([70.0, 1.0, 1.0, 1.0])  # rank 0 now holds memory on its GPUs
    assert resolve_hardware(
        {"accelerator": "auto", "devices": "auto", "max_devices": 2, "precision": "32-true"}, MODEL
    )["devices"] == [1, 2]


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_is_bf16_on_gpus_that_have_it_else_the_seeds_fp16(bf16, expected, gpus, monkeypatch):
    gpus([10.0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.delenv("WGPT_GPU_IDS", raising=False)
    assert (
        resolve_hardware({"accelerator": "auto", "devices": "auto", "precision": "auto"}, MODEL)["precision"]
        == expected
    )


def test_auto_precision_on_cpu_is_what_the_cpu_does_well():
    assert resolve_hardware({"accelerator": "cpu", "precision": "auto"}, MODEL)["precision"] == cpu_precision()


def test_missing_nvml_falls_back_to_cpu_with_one_line(gpus, monkeypatch, caplog):
    gpus(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = resolve_hardware(
        {"accelerator": "auto", "devices": "auto", "max_devices": 2, "precision": "16-mixed"}, MODEL
    )
    assert args == {"accelerator": "cpu", "devices": 1, "precision": cpu_precision()}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "NVML is unavailable (NVML Shared Library Not Found)" in warning.message
    assert "training on CPU" in warning.message


@NO_GPU
def test_no_gpu_trains_on_cpu_with_one_line(caplog):
    caplog.set_level(logging.INFO, logger="wgpt")
    args = resolve_hardware({"accelerator": "auto", "devices": "auto", "max_devices": 2, "precision": "32-true"}, MODEL)
    assert args == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    assert caplog.text.count("No CUDA GPU found: training on CPU") == 1


@NO_GPU
@pytest.mark.parametrize("precision", ["16", "16-mixed", "16-true"])
def test_fp16_on_cpu_falls_back_to_what_the_cpu_does_well(precision, caplog):
    caplog.set_level(logging.INFO, logger="wgpt")
    args = resolve_hardware({"accelerator": "cpu", "precision": precision, "max_devices": 2}, MODEL)
    assert args == {"accelerator": "cpu", "precision": cpu_precision()}
    assert f"precision {precision} is a GPU setting; this CPU run uses {cpu_precision()} instead" in caplog.text


def test_cpu_precision_follows_the_hardware():
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_precision() == ("bf16-mixed" if fast_bf16 else "32-true")


@NO_GPU
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_explicit_cpu_precisions_are_kept(precision):
    assert resolve_hardware({"accelerator": "auto", "precision": precision}, MODEL)["precision"] == precision


@NO_GPU
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_request_without_a_gpu_is_one_clear_error(accelerator):
    with pytest.raises(WgptError, match=f"trainer.accelerator={accelerator} but no CUDA GPU is visible"):
        resolve_hardware({"accelerator": accelerator}, MODEL)


TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "x",
    "RANK": "3",
    "GROUP_RANK": "1",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "WORLD_SIZE": "4",
}
SRUN = {"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_PROCID": "3", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "77"}


@pytest.mark.parametrize("launcher", [TORCHRUN, SRUN], ids=["torchrun", "srun"])
def test_ranks_started_by_torchrun_or_srun_set_the_device_count(launcher, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="wgpt")
    for name, value in launcher.items():
        monkeypatch.setenv(name, value)
    args = resolve_hardware({"accelerator": "cpu", "devices": "auto", "num_nodes": 1, "precision": "32-true"}, MODEL)
    assert (args["devices"], args["num_nodes"]) == (2, 2)
    assert "2 processes per node on 2 nodes, as the launcher started them" in caplog.text
    explicit = resolve_hardware({"accelerator": "cpu", "devices": 2, "num_nodes": 2, "precision": "32-true"}, MODEL)
    assert (explicit["devices"], explicit["num_nodes"]) == (2, 2)


def test_validation_interval_is_counted_in_optimizer_steps():
    cfg = OmegaConf.create(
        {"accelerator": "cpu", "val_every_n_steps": 50, "accumulate_grad_batches": 4, "max_devices": 2}
    )
    args = trainer_arguments(cfg, MODEL)
    assert args["val_check_interval"] == 200 and "val_every_n_steps" not in args and "max_devices" not in args
    # A step's micro-batches loaded as one batch (train.py with wgpt's datamodule): 50 batches, no accumulation.
    stepped, micro_batches = with_step_batches(args)
    assert (stepped["val_check_interval"], stepped["accumulate_grad_batches"], micro_batches) == (50, 1, 4)
    assert [runs_step_batches(s) for s in ("auto", "ddp", "fsdp_cpu_offload", "deepspeed_stage_2")] == [
        True,
        True,
        False,
        False,
    ]
    assert runs_step_batches(fsdp_strategy())


def test_hooks_are_profiled_by_nothing_unless_a_run_asks_for_a_profiler():
    import lightning as L
    from lightning.pytorch.profilers import SimpleProfiler

    from wgpt.core.profiler import NoProfiler

    base = {"accelerator": "cpu", "val_every_n_steps": 50, "max_devices": 2}
    args = trainer_arguments(OmegaConf.create(base), MODEL)
    assert isinstance(args["profiler"], NoProfiler)
    nothing = args["profiler"].profile("[Callback]SpeedMonitor.on_train_batch_end")
    assert nothing is args["profiler"].profile("run_training_batch")  # one shared context, nothing made per hook
    with nothing:
        pass
    trainer = L.Trainer(**args, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.profiler is args["profiler"]
    asked = trainer_arguments(OmegaConf.create({**base, "profiler": "simple"}), MODEL)
    assert asked["profiler"] == "simple"
    assert isinstance(L.Trainer(**asked, logger=False).profiler, SimpleProfiler)

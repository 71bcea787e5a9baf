import logging

import pytest
import torch
from omegaconf import OmegaConf

from wgpt.devices import cpu_precision, resolve_hardware
from wgpt.errors import WgptError
from wgpt.train import trainer_arguments

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
MODEL = torch.nn.Linear(4, 4)


@pytest.mark.parametrize("precision", ["16", "16-mixed", "16-true"])
def test_fp16_on_cpu_falls_back_to_what_the_cpu_does_well(precision, caplog):
    caplog.set_level(logging.INFO, logger="wgpt")
    args = resolve_hardware({"accelerator": "cpu", "precision": precision, "max_devices": 2}, MODEL)
    assert args == {"accelerator": "cpu", "precision": cpu_precision()}
    assert f"precision {precision} is a GPU setting; this CPU run uses {cpu_precision()} instead" in caplog.text


def test_cpu_precision_follows_the_hardware():
    fast_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_precision() == ("bf16-mixed" if fast_bf16 else "32-true")


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_explicit_cpu_precisions_are_kept(precision):
    assert resolve_hardware({"accelerator": "auto", "precision": precision}, MODEL)["precision"] == precision


def test_gpu_request_without_a_gpu_is_one_clear_error():
    with pytest.raises(WgptError, match="trainer.accelerator=gpu but no CUDA GPU is visible"):
        resolve_hardware({"accelerator": "gpu"}, MODEL)


def test_validation_interval_is_counted_in_optimizer_steps():
    cfg = OmegaConf.create({"accelerator": "cpu", "val_every_n_steps": 50, "accumulate_grad_batches": 4, "max_devices": 2})
    args = trainer_arguments(cfg, MODEL)
    assert args["val_check_interval"] == 200 and "val_every_n_steps" not in args and "max_devices" not in args

"""Fast paths checked in this process: the warmup-cosine curve, SDPA's fused kernel against the
written-out attention, TF32 only where the GPU has it. Inside real train.py runs:
tests/e2e/test_fast_paths_cli.py."""

import pytest
import torch

from wgpt.core.devices import enable_tf32
from wgpt.optim.scheduler import warmup_cosine


def test_warmup_cosine_shape():
    lrs = [warmup_cosine(s, 1000, warmup_steps=100) for s in range(1001)]
    assert lrs[0] == pytest.approx(0.01) and lrs[99] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[99:], lrs[100:]))  # never rises after warmup
    assert lrs[1000] == pytest.approx(0.1) and lrs[550] == pytest.approx(0.55, abs=1e-3)


def test_sdpa_runs_the_fused_kernel_and_matches_the_written_out_attention():
    from torch.utils._python_dispatch import TorchDispatchMode

    from wgpt.models import GPT, Llama

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    x = torch.randint(0, 128, (2, 16))
    for cls, extra in ((GPT, {}), (Llama, {"n_kv_heads": 2})):
        models = [
            cls(vocab_size=128, d_embed=32, n_layers=1, n_heads=4, max_seq_len=16, sdpa=s, **extra)
            for s in (True, False)
        ]
        models[1].load_state_dict(models[0].state_dict())
        outputs = []
        for model in models:
            with Ops() as ops:
                outputs.append(model(x))
            fused = any("scaled_dot_product" in name for name in ops.names)
            assert fused is model.config["sdpa"], sorted(ops.names)
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_tf32_only_where_the_gpu_has_it():
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        assert enable_tf32(True) and torch.get_float32_matmul_precision() == "high"
        torch.set_float32_matmul_precision("highest")
    else:  # CPUs and pre-Ampere GPUs: nothing changes
        assert not enable_tf32(True) and torch.get_float32_matmul_precision() == "highest"
    assert not enable_tf32(False)

"""A CPU's peak for MFU: the best of several matmul sizes up to the model's largest, cached."""

import torch

import wgpt.core.devices as devices
from wgpt.models import GPT


def test_peak_is_the_best_of_sizes_up_to_the_largest_matmul(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []

    def fake_rate(dtype, seconds, rows, inner, out):  # a CPU that is fastest on the largest product
        measured.append((rows, inner, out))
        return float(rows * inner * out)

    monkeypatch.setattr(devices, "_measure_matmul_flops", fake_rate)
    largest = (512, 192, 50304)  # gpt2-tiny's output layer on 4 x 128 tokens
    peak = devices.cpu_peak_flops(torch.float32, largest_matmul=largest)
    assert measured == [(512, 512, 512), (1024, 1024, 1024), largest]  # 2048^3 is larger than the model's
    assert peak == 512 * 192 * 50304
    measured.clear()
    assert devices.cpu_peak_flops(torch.float32, largest_matmul=largest) == peak and measured == []  # cached
    devices.cpu_peak_flops(torch.float32, largest_matmul=(64, 64, 64))
    assert measured == [(64, 64, 64)]  # another model: measured for its own sizes


def test_largest_matmul_is_the_output_layer_of_a_small_model():
    model = GPT(vocab_size=50304, d_embed=192, n_layers=2, n_heads=6, max_seq_len=128)
    assert devices.largest_matmul(model, rows=1024) == (1024, 192, 50304)


def test_measured_rate_is_a_real_positive_figure():
    rate = devices._measure_matmul_flops(torch.float32, 0.05, 64, 64, 64)
    assert 1e6 < rate < 1e15

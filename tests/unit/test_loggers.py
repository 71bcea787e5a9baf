"""The logger group as composed: csv always kept beside tensorboard and wandb. The loggers in real
train.py runs: tests/e2e/test_loggers_cli.py."""

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT


@pytest.mark.parametrize("choice", ["tensorboard", "wandb", "[tensorboard,wandb]", "[wandb,csv]"])
def test_every_logger_choice_keeps_metrics_csv(choice):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"logger={choice}"])
    assert cfg.logger.csv._target_ == "wgpt.core.logger.CSVLogger"  # what plot and sweep tables read
    assert set(cfg.logger) == {"csv", *choice.strip("[]").split(",")}

"""callbacks.target (wgpt.core.target.TargetReached) from config: bad settings are one line each
before anything runs, and without a value there is no callback at all. Runs that reach a target:
tests/e2e/test_target_runs.py."""

import pytest
from hydra import compose, initialize_config_dir

from wgpt.core.callbacks import build_callbacks
from wgpt.core.target import TargetReached
from wgpt.core.validate import check_values
from wgpt.util.errors import WgptError

from conftest import ROOT


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("callbacks.target.value=low", "callbacks.target.value=low is not a number: give a finite number, e.g. 1.6"),
        ("callbacks.target.value=nan", "callbacks.target.value=nan is out of range: give a finite number, e.g. 1.6"),
        (
            "callbacks.target.metric=loss",
            "callbacks.target.metric=loss is not a validation metric: use one of val_loss",
        ),
        ("callbacks.target.mode=lower", "callbacks.target.mode=lower is not min or max"),
        ("callbacks.target.stop=yes", "callbacks.target.stop=yes is not true or false"),
        ("+trainer.min_steps=10", "callbacks.target.stop=true cannot stop before trainer.min_steps=10 is done"),
    ],
)
def test_bad_target_settings_are_one_line(override, message):
    with pytest.raises(WgptError, match=message.replace(".", r"\.")):
        check_values(composed("callbacks.target.value=1.5", "callbacks.target.stop=true", override))


def test_the_target_is_off_by_default_and_then_no_callback_at_all():
    cfg = composed("paths.output_dir=/tmp/unused", "start_datetime=2020-01-01_00-00-00")
    assert not any(isinstance(c, TargetReached) for c in build_callbacks(cfg.callbacks))
    on = composed("paths.output_dir=/tmp/unused", "start_datetime=2020-01-01_00-00-00", "callbacks.target.value=2")
    (target,) = [c for c in build_callbacks(on.callbacks) if isinstance(c, TargetReached)]
    assert (target.metric, target.value, target.mode, target.stop) == ("val_loss", 2, "min", False)

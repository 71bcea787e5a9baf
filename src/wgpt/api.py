"""The Python API, for notebooks and scripts: the configs, models and runs of the command line.

    import wgpt

    cfg = wgpt.load_config("gpt2-tiny", overrides=["model.n_layers=2"])  # conf/train.yaml, as train.py composes it
    model = wgpt.load_model_from_config(cfg)                            # the model train.py would start from
    model, tokenizer, cfg = wgpt.load_run("outputs/gpt2-tiny/<run>")    # a trained run: its best checkpoint

Configs come from Hydra's compose API over the checkout's ``conf/`` (``wgpt.core.compose``), so there
is one config system: anything ``train.py`` takes as an override, ``load_config`` takes too.
Mistakes raise a WgptError (one line, as the command line prints it) instead of exiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from wgpt.core.compose import compose_train_config, repo_root
from wgpt.core.report import FULL_ERROR, describe_config_error
from wgpt.core.resume import recorded_start
from wgpt.core.validate import check_config
from wgpt.data.tokenizer import end_of_text_id, tokenizer_spec
from wgpt.interop.sources import load_model_source
from wgpt.models import padded_vocab_size
from wgpt.models.build import build_model, build_on_meta
from wgpt.util.environment import environment
from wgpt.util.errors import WgptError


def load_config(model: str = "gpt2-tiny", overrides: Sequence[str] = ()) -> DictConfig:
    """The training config of ``python train.py model=<model> <overrides...>`` (unresolved: the
    run dir and start time are a run's own), checked as train.py checks it before any work."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str):
        raise WgptError(f"overrides={overrides!r} is one string: give a list, e.g. overrides=[{overrides!r}]")
    try:
        with environment(**{FULL_ERROR: "1"}):  # Hydra's errors raised here, not printed and exited on
            cfg = compose_train_config([f"model={model}", *overrides])
        run = HydraConfig.get()
        with read_write(run), open_dict(run):  # as Hydra sets it when a run starts (the loggers' save_dir follows it)
            run.runtime.output_dir = str(Path(run.run.dir).resolve())
        check_config(cfg)  # loads torch and Lightning (seconds) the first time
    except (HydraException, OmegaConfBaseException) as e:
        raise WgptError(describe_config_error(e, repo_root() / "conf")) from None
    except ValueError as e:  # Hydra's own check of a group set to null
        if "Config group override must be" not in str(e):
            raise
        raise WgptError(f"a config group takes an option, not null ({e})") from None
    return cfg


def load_model_from_config(cfg: DictConfig):
    """The model of ``cfg.model`` for the vocabulary of ``cfg.tokenizer`` (padded to a multiple
    of 64), initialized as train.py initializes it (seeded by ``cfg.seed``; the global random
    state is left as it was). Its knobs are checked first, one line for a bad one."""
    import torch

    spec = tokenizer_spec(cfg)
    vocab_size, eot_id = padded_vocab_size(spec.vocab_size), end_of_text_id(spec)
    build_on_meta(cfg.model, vocab_size, eot_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, vocab_size, eot_id)


def load_run(path: str | Path) -> tuple[Any, Any, DictConfig | None]:
    """(model in eval mode, tokenizer, training config) of a run dir (its newest best checkpoint,
    else its recent one), a checkpoint in it (.ckpt, or the best-*.safetensors beside it) or a
    Hugging Face model directory. The config is the run's ``.hydra/config.yaml`` (None for a
    Hugging Face directory, or a checkpoint moved out of its run)."""

    loaded = load_model_source(path, key="path")
    config = run_config(loaded.run_dir) if loaded.run_dir is not None else None
    return loaded.model, loaded.tokenizer, config


def run_config(run_dir: Path) -> DictConfig | None:
    """The run's ``.hydra/config.yaml`` with its own start time and dir in place of the
    interpolations Hydra saved (``${wgpt.start_datetime:}`` reads this process's clock, and
    ``${hydra:runtime.output_dir}`` means nothing outside the run), so it resolves to the run's
    values wherever it is read; None when the file is missing."""
    from omegaconf import open_dict

    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return None
    config = OmegaConf.load(saved)
    with open_dict(config):
        if OmegaConf.is_config(config.get("paths")):
            config.paths.output_dir = str(run_dir)
        started = recorded_start(run_dir)
        if started is not None:
            config.start_datetime = started
    return config

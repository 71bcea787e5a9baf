"""Train a language model: `python train.py model=gpt2-tiny` (see README.md and conf/train.yaml)."""

import os
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))  # conf/paths: root_dir

import wgpt.core.launch  # noqa: E402, F401  (registers the resolvers conf/train.yaml uses)
from wgpt.core.report import discarded_on_bad_input, one_line_config_errors, one_line_errors  # noqa: E402
from wgpt.core.sweep_resume import finished_job, resume_arguments  # noqa: E402
from wgpt.core.validate import check_values  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with one_line_errors():
        with discarded_on_bad_input(cfg.paths.output_dir):
            check_values(cfg)  # before torch and Lightning load (seconds), so a mistyped value is reported at once
        done = finished_job(cfg)  # a resumed sweep's job that finished before: its result, nothing trained
        if done is not None:
            return done
        from wgpt.core.train import train

        return train(cfg, script=__file__)


if __name__ == "__main__":
    with one_line_errors():
        # `resume=<sweep dir>`: that sweep again, in its dir (Hydra itself takes only key=value overrides).
        argv = resume_arguments(sys.argv)
    if argv != sys.argv and not wgpt.core.launch.rank_tag():
        print(f"Resuming the sweep as: python {shlex.join(argv)}", flush=True)
    sys.argv = argv
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

"""Evaluate a model: `python eval.py ckpt_path=<.ckpt, run dir or Hugging Face dir> [data=...]`
(see README.md and conf/eval.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))  # conf/paths: root_dir

from wgpt.core.report import one_line_config_errors, one_line_errors  # noqa: E402
from wgpt.tools.evaluate import evaluate_checkpoint  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        evaluate_checkpoint(cfg)


if __name__ == "__main__":
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

"""Train a language model: `python train.py model=gpt2-tiny` (see README.md and conf/train.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))  # conf/paths: root_dir

from wgpt.errors import one_line_errors  # noqa: E402
from wgpt.train import train  # noqa: E402  (registers the resolvers conf/train.yaml uses)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with one_line_errors():
        return train(cfg, script=__file__)


if __name__ == "__main__":
    main()

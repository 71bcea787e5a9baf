"""Sample text from a trained model:
`python generate.py ckpt_path=<.ckpt, run dir or Hugging Face dir> prompt='To be'` (see conf/generate.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))

from wgpt.core.report import one_line_config_errors, one_line_errors  # noqa: E402
from wgpt.tools.generate import generate_from_config  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        generate_from_config(cfg)


if __name__ == "__main__":
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

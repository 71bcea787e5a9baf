"""Prepare a dataset's token bins: `python process.py data=tinystories [max_tokens=1000000]`."""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))  # conf/paths: root_dir

from wgpt.core.report import discarded_on_bad_input, one_line_config_errors, one_line_errors  # noqa: E402
from wgpt.data.prepare import process  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="process")
def main(cfg: DictConfig) -> None:
    with one_line_errors(), discarded_on_bad_input(HydraConfig.get().runtime.output_dir):
        process(cfg)


if __name__ == "__main__":
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

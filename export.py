"""Export a model for Hugging Face transformers: `python export.py ckpt_path=<.ckpt or run dir> out=<dir>` (see conf/export.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))

from wgpt.errors import WgptError, one_line_config_errors, one_line_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        for key in ("ckpt_path", "out"):
            if OmegaConf.is_missing(cfg, key) or cfg[key] is None:
                raise WgptError(f"{key} is not set: python export.py ckpt_path=<run dir or .ckpt> out=<new directory>")
        if not isinstance(cfg.overwrite, bool):
            raise WgptError(f"overwrite={cfg.overwrite} is not true or false")
        from wgpt.hf import export  # torch loads here, after the cheap checks

        export(str(cfg.ckpt_path), str(cfg.out), overwrite=cfg.overwrite)


if __name__ == "__main__":
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

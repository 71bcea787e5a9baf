"""Export a model for Hugging Face transformers: `python export.py ckpt_path=<.ckpt or run dir> out=<dir>`
(see conf/export.yaml)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("WGPT_ROOT", str(Path(__file__).resolve().parent))

from wgpt.core.report import one_line_config_errors, one_line_errors  # noqa: E402
from wgpt.util.errors import WgptError  # noqa: E402

EXPORT_DTYPES = ("float32", "bfloat16", "float16")  # what transformers' config.json "dtype" names


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        for key in ("ckpt_path", "out"):
            if OmegaConf.is_missing(cfg, key) or cfg[key] is None:
                raise WgptError(f"{key} is not set: python export.py ckpt_path=<run dir or .ckpt> out=<new directory>")
        if not isinstance(cfg.overwrite, bool):
            raise WgptError(f"overwrite={cfg.overwrite} is not true or false")
        dtype = cfg.get("dtype")
        if dtype is not None and dtype not in EXPORT_DTYPES:
            raise WgptError(f"dtype={dtype} is not one of {', '.join(EXPORT_DTYPES)}, or null for the checkpoint's own")
        from wgpt.interop.export import export  # torch loads here, after the cheap checks

        export(str(cfg.ckpt_path), str(cfg.out), overwrite=cfg.overwrite, dtype=dtype)


if __name__ == "__main__":
    with one_line_config_errors(Path(__file__).resolve().parent / "conf"):
        main()

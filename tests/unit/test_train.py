"""The training config as Hydra composes it: the seed's trainer defaults, the data dir, a mixture.
train.py end to end: tests/e2e/test_train_cli.py."""

from hydra import compose, initialize_config_dir

from conftest import ROOT


def test_seed_trainer_defaults_compose():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=gpt2"])
    trainer = cfg.trainer
    assert (trainer.max_epochs, trainer.precision, trainer.max_devices, trainer.log_every_n_steps) == (
        10,
        "auto",
        2,
        50,
    )
    assert cfg.callbacks.recent.every_n_train_steps == 500
    assert cfg.model._target_ == "wgpt.models.GPT" and cfg.data._target_ == "wgpt.data.DatasetLightningWrapper"
    assert cfg.data.sampler._target_ == "wgpt.data.PDBSampler"
    # The seed's BATCH_SIZE and LEARNING_RATE are the group defaults; model configs may tune them.
    from omegaconf import OmegaConf

    assert OmegaConf.load(ROOT / "conf/data/common.yaml").batch_size == 64
    assert OmegaConf.load(ROOT / "conf/optim/adamw.yaml").lr == 5e-5


def test_data_dir_does_not_depend_on_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("WGPT_ROOT", str(ROOT))
    monkeypatch.delenv("WGPT_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train")
    assert cfg.paths.data_dir == f"{ROOT}/data"
    assert cfg.paths.output_root == f"{ROOT}/outputs"


def test_mix_names_two_datasets_and_takes_weights():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=mix", "data.weights={tinystories:0.2,fineweb-edu:0.8}"])
    assert list(cfg.data.datasets) == ["tinystories", "fineweb-edu"]
    assert dict(cfg.data.weights) == {"tinystories": 0.2, "fineweb-edu": 0.8}
    assert cfg.data.sampler._target_ == "wgpt.data.PDBSampler" and cfg.data.batch_size == 8  # gpt2-tiny's

"""The Slurm launcher preset, composed in this process (the real DDP runs: tests/e2e/test_ddp_cli.py)."""

from conftest import ROOT


def test_the_slurm_preset_sizes_jobs_from_the_trainer():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer.num_nodes=2", "trainer.devices=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)

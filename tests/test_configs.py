"""Configs are typed: load_config gives the task's dataclasses (enums for closed sets), OmegaConf and each
`__post_init__` reject bad values in one line, a run folder's config.yaml reads back to the same object, and
no value the user set is silently replaced."""

import dataclasses
import logging

import pytest

from sparsedm.config import ChiroDiffExperiment, LDMExperiment, load_config, read_run_config
from sparsedm.config_loader import to_dict
from sparsedm.diffusion.config import BetaSchedule, DiffusionConfig, Sampler
from sparsedm.errors import UserError
from sparsedm.runs.run_dir import CONFIG, RunDir
from sparsedm.sparse.config import Distribution, SparseConfig
from sparsedm.train.config import Precision, SampleConfig, TrainConfig

CPU = "configs/chirodiff_kanjivg_cpu.yaml"


def test_load_config_gives_the_typed_experiment_with_enums():
    cfg = load_config(CPU, ["sample.sampler=ddpm", "sparse.distribution=uniform", "train.precision=bf16"])
    assert isinstance(cfg, ChiroDiffExperiment) and isinstance(cfg.sparse, SparseConfig)
    assert cfg.sample.sampler is Sampler.ddpm and cfg.sparse.distribution is Distribution.uniform
    assert cfg.train.precision is Precision.bf16
    assert cfg.sample.sampler == "ddpm" and f"{cfg.sample.sampler}" == "ddpm"  # still a string where one is used
    ldm = load_config("configs/ldm_openmoji_cpu.yaml", ["autoencoder.path=/some/ae"])
    assert isinstance(ldm, LDMExperiment) and ldm.diffusion.beta_schedule is BetaSchedule.scaled_linear


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sample.sampler=euler"], "sample.sampler='euler' is unknown; use ddpm or ddim"),
        (["train.precision=fp8"], "train.precision='fp8' is unknown; use fp32, bf16 or fp16"),
        (["sparse.prune_rate_decay=linear"], "sparse.prune_rate_decay='linear' is unknown; use cosine or constant"),
        (["data.representation=polar"], "data.representation='polar' is unknown; use delta or absolute"),
        (["sparse.method=snip"], "sparse.method='snip' is unknown; use one of dense, static, rigl, magran"),
        (["train.ema_decay=1.0"], "train.ema_decay=1.0 must be in [0, 1)"),
        (["sample.steps=0"], "sample.steps and sample.num must be >= 1"),
        (["diffusion.beta_start=0.5"], "need 0 < beta_start <= beta_end < 1"),
    ],
)
def test_bad_values_are_one_line_errors_from_omegaconf_or_post_init(overrides, message):
    with pytest.raises(UserError) as caught:
        load_config(CPU, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value


def test_a_bad_enum_in_the_yaml_file_is_one_line_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: chirodiff\nsample:\n  sampler: euler\n")
    with pytest.raises(UserError, match=r"^sample.sampler='euler' is unknown; use ddpm or ddim$"):
        load_config(str(path))


def test_dataclasses_built_in_python_are_checked_the_same_way():
    assert SampleConfig(sampler="ddpm").sampler is Sampler.ddpm
    with pytest.raises(UserError, match="sample.sampler='euler' is unknown"):
        SampleConfig(sampler="euler")
    with pytest.raises(UserError, match="diffusion.beta_schedule='cosine' is unknown"):
        DiffusionConfig(beta_schedule="cosine")
    with pytest.raises(UserError, match="S must be in"):
        dataclasses.replace(SparseConfig(), sparsity=1.0)


def test_a_timestep_count_that_disagrees_with_the_diffusion_is_refused_not_replaced():
    with pytest.raises(UserError) as caught:
        load_config(CPU, ["model.num_train_timesteps=500"])
    assert "model.num_train_timesteps=500 differs from diffusion.num_train_timesteps=1000" in str(caught.value)
    agreeing = load_config(CPU, ["model.num_train_timesteps=500", "diffusion.num_train_timesteps=500"])
    assert agreeing.model.num_train_timesteps == agreeing.diffusion.num_train_timesteps == 500


EPOCHS = "configs/chirodiff_quickdraw.yaml"  # a paper config: it sets train.epochs


def test_steps_on_the_command_line_replace_the_config_s_epochs_and_the_log_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="sparsedm"):
        cfg = load_config(EPOCHS, ["train.steps=2"])
    assert (cfg.train.steps, cfg.train.epochs) == (2, None)
    assert caplog.messages == [f"train.steps=2 from the command line replaces train.epochs=600 of {EPOCHS}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparsedm"):
        cfg = load_config(CPU, ["train.epochs=3"])  # and the other way round
    assert (cfg.train.steps, cfg.train.epochs) == (None, 3)
    assert caplog.messages == [f"train.epochs=3 from the command line replaces train.steps=1500 of {CPU}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sparsedm"):  # a file's epochs replaces only the default: no note
        assert (load_config(EPOCHS).train.steps, load_config(EPOCHS).train.epochs) == (None, 600)
        assert load_config(EPOCHS, ["train.epochs=null"]).train.steps == 2000
    assert caplog.messages == []


def test_steps_and_epochs_set_in_one_source_are_refused(tmp_path):
    with pytest.raises(UserError) as caught:
        load_config(CPU, ["train.steps=2", "train.epochs=3"])
    assert str(caught.value) == (
        "the command line sets both train.steps=2 and train.epochs=3; set one (train.epochs=null to count train.steps)"
    )
    both = tmp_path / "both.yaml"
    both.write_text("task: chirodiff\ntrain:\n  steps: 100\n  epochs: 5\n")
    with pytest.raises(UserError, match=f"^{both} sets both train.steps=100 and train.epochs=5; set one"):
        load_config(str(both))
    with pytest.raises(UserError, match="train.steps=5 and train.epochs=3 are both set; set one, and the other"):
        TrainConfig(steps=5, epochs=3)  # built in Python: no sources to rank, so both is refused


def test_an_epochs_run_s_config_yaml_reads_back_and_loads_again_as_a_file(tmp_path):
    cfg = load_config(EPOCHS)
    run = RunDir(tmp_path / "run")
    run.write_config(cfg)
    assert read_run_config(run) == cfg == load_config(str(run.path / CONFIG))


def test_the_run_folder_config_reads_back_to_the_same_typed_object(tmp_path):
    cfg = load_config(CPU, ["sparse.method=set", "sample.sampler=ddpm", "sparse.custom_densities={gru: 0.5}"])
    run = RunDir(tmp_path / "run")
    run.write_config(cfg)
    text = (run.path / CONFIG).read_text()
    assert "sampler: ddpm" in text and "method: set" in text and "Sampler" not in text
    assert read_run_config(run) == cfg
    plain = to_dict(cfg)
    assert plain["sample"]["sampler"] == "ddpm" and type(plain["sample"]["sampler"]) is str


def test_sampling_options_make_a_new_config_and_leave_the_run_s_alone():
    cfg = load_config(CPU)
    sampling = cfg.sample.with_options(steps=3, sampler="ddpm", eta=None)
    assert (sampling.steps, sampling.sampler, sampling.eta) == (3, Sampler.ddpm, cfg.sample.eta)
    assert (cfg.sample.steps, cfg.sample.sampler) == (50, Sampler.ddim)
    with pytest.raises(UserError, match="sample.sampler='euler' is unknown"):
        cfg.sample.with_options(sampler="euler")


def test_draw_samples_hands_the_sampling_config_to_the_task(tmp_path):
    """No side channel: the options reach the task as an argument; the run's config is not touched."""
    import numpy as np

    from sparsedm.inference.sampling import draw_samples

    class Recorder:
        def sample(self, model, num, generator, device, sampling, progress=True):
            self.seen = sampling
            return {"x": np.zeros((num, 2))}

        def save_picture(self, samples, path):
            path.write_bytes(b"")

    cfg, task = load_config(CPU), Recorder()
    sampling = cfg.sample.with_options(steps=7)
    samples = draw_samples(RunDir(tmp_path), task, None, "cpu", sampling, 3, 0, "samples", progress=False)
    assert task.seen is sampling and samples["x"].shape == (3, 2) and cfg.sample.steps == 50
    assert (tmp_path / "samples" / "samples.npz").is_file()

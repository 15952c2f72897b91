import runpy
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "sparsify_unet.py"


def test_the_readme_example_sparsifies_a_diffusers_unet(capsys):
    main = runpy.run_path(str(EXAMPLE))["main"]
    engine = main(steps=12, batch_size=4, update_interval=4)
    assert abs(engine.sparsity() - 0.5) < 1e-3
    assert engine.step == 12 and engine.last_update  # RigL updated the topology
    for name, param in engine.params.items():
        assert (param[~engine.masks[name]] == 0).all()
        assert (dict(engine.ema.named_parameters())[name][~engine.masks[name]] == 0).all()
    assert "total" in capsys.readouterr().out  # the per-tensor report was printed
    assert any("to_q" in n for n in engine.params)  # attention projections are sparse too

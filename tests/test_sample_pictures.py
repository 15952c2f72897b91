"""Which runs the sweep's sample pictures show, and how each row is labelled (made-up eval records)."""

from sparsedm.experiments.sample_pictures import rows_at_sparsity, run_label


def record(method, sparsity, prune_rate, seed):
    name = method if method == "dense" else f"{method}-S{sparsity}" + (f"-p{prune_rate}" if method != "static" else "")
    return {"method": method, "sparsity": sparsity, "prune_rate": prune_rate, "seed": seed, "run": f"{name}-seed{seed}"}


RECORDS = [
    record(method, s, p, seed)
    for seed in (2, 0, 1)
    for method, s, p in [
        ("magran", 0.9, 0.1),
        ("rigl", 0.9, 0.1),
        ("rigl", 0.9, 0.05),
        ("static", 0.9, 0.1),
        ("static", 0.5, 0.1),
        ("rigl", 0.5, 0.1),
        ("dense", 0.0, 0.1),
    ]
]


def test_rows_at_a_sparsity_are_dense_then_each_sparse_method_and_p_at_its_lowest_seed():
    rows = rows_at_sparsity(RECORDS, 0.9)
    assert [r["run"] for r in rows] == [
        "dense-seed0",
        "static-S0.9-seed0",
        "rigl-S0.9-p0.05-seed0",
        "rigl-S0.9-p0.1-seed0",
        "magran-S0.9-p0.1-seed0",
    ]
    assert [r["run"] for r in rows_at_sparsity(RECORDS, 0.5)] == [
        "dense-seed0",
        "static-S0.5-seed0",
        "rigl-S0.5-p0.1-seed0",
    ]
    without_seed0 = [r for r in RECORDS if r["seed"] != 0]
    assert {r["seed"] for r in rows_at_sparsity(without_seed0, 0.9)} == {1}


def test_labels_name_the_method_its_knobs_and_the_seed():
    assert run_label(record("dense", 0.0, 0.1, 0)) == "Dense (seed 0)"
    assert run_label(record("static", 0.9, 0.1, 1)) == "Static-DM S=0.9 (seed 1)"
    assert run_label(record("rigl", 0.75, 0.05, 2)) == "RigL-DM S=0.75 p=0.05 (seed 2)"

import os

# No hub look-ups in tests: diffusers would otherwise wait ~23 s for a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_chirodiff  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _single_threaded():
    """The one way tests run single-threaded: the whole session on one intra-op thread (subprocesses are given
    OMP_NUM_THREADS=1). Tiny tensors only lose from a second thread, which contends with other jobs on 2-core
    machines (8x slower; eigvals of a 2048 x 2048 matrix 2.5 s on 1 thread, 74 s on 2 while another job ran),
    and runs compared bit for bit need equal reduction orders in every process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    """One data cache for every tiny run of the session (`data.cache_dir=...`): the built-in KanjiVG data is
    preprocessed once per data setting (the cache is keyed by it). FID reference statistics go there too, so a
    test that computes real Inception FID keeps its own cache (the pooled-pixel stub of fid_stub writes its own
    statistics under the same key)."""
    return f"data.cache_dir={tmp_path_factory.mktemp('tiny-cache')}"


@pytest.fixture(scope="session")
def tiny_run(tiny_cache) -> list:
    """The overrides of the shared tiny ChiroDiff run (tiny_models.tiny_chirodiff) on the session's cache; tests
    add the steps, methods and intervals they check (later overrides win)."""
    return [*tiny_chirodiff(), tiny_cache]

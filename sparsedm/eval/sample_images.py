"""The pictures FID sees for a run's samples: a stroke run's `samples.npz` is rasterised by the run's own task.

Such a file holds `features` and `lengths`, no `images`. It sits in RUN/samples/, so the run's config, and
with it the task and its rendering, is at RUN/config.yaml.
"""

from pathlib import Path

import numpy as np

from sparsedm.config import read_run_config
from sparsedm.errors import UserError
from sparsedm.runs.files import read_npz
from sparsedm.runs.run_dir import CONFIG, RunDir
from sparsedm.tasks import build_task


def run_of_samples(npz_path: Path) -> RunDir:
    """The run a samples file belongs to (RUN/samples/FILE.npz -> RUN); UserError if there is none."""
    run = RunDir(Path(npz_path).resolve().parent.parent)
    if not run.exists():
        raise UserError(
            f"{npz_path} has no 'images' array and {run.path / CONFIG} does not exist, so nothing says how to draw "
            "it; give a run's RUN/samples/*.npz, a folder of images, or a .npz with uint8 'images'"
        )
    return run


def samples_npz_to_images(npz: np.lib.npyio.NpzFile) -> np.ndarray:
    """`fid.load_images`'s hook: uint8 N x H x W x C images of a run's samples file, drawn by its task."""
    # numpy keeps the path it opened in the archive's ZipFile; load_images always opens by path
    path = Path(npz.zip.filename)
    task = build_task(read_run_config(run_of_samples(path)))
    arrays = read_npz(path, "give a file written by `sparsedm sample` or `sparsedm evaluate`")
    odd = [name for name, array in arrays.items() if not np.issubdtype(array.dtype, np.number)]
    if odd:
        raise UserError(
            f"{path}: {', '.join(odd)} holds {arrays[odd[0]].dtype} values, not numbers; is it a `sparsedm sample` file?"
        )
    try:
        return task.to_images(arrays)
    except KeyError as error:
        raise UserError(
            f"{path} lacks the array {error} of a {task.name} run's samples; is it a `sparsedm sample` file?"
        ) from None
    except (ValueError, TypeError, IndexError) as error:  # arrays of the wrong shapes for this task
        raise UserError(
            f"{path} does not hold a {task.name} run's samples ({error}); is it a `sparsedm sample` file?"
        ) from None

"""ChiroDiff (Das et al. 2023) as the paper trains it: a BiGRU denoiser over pen-stroke sequences.

Data points are (dx, dy, pen) per point (see sparsedm.data.strokes); the loss is ε-prediction MSE over real
points only; samples take their lengths from the training set's length distribution.
"""

from dataclasses import replace
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from sparsedm.data.strokes import (
    StrokeDataset,
    collate_strokes,
    display_name,
    features_to_sketches,
    load_stroke_splits,
    render_sketches,
    save_sketch_grid,
    sequence_lengths,
)
from sparsedm.data.strokes.dataset import reader_revision
from sparsedm.data.strokes.render import default_line_width
from sparsedm.data.strokes.sketch import Sketch
from sparsedm.diffusion import GaussianDiffusion
from sparsedm.models.chirodiff import ChiroDiffDenoiser
from sparsedm.tasks.base import Task

RENDER_SIZE = 64  # sketches are rasterised at 64 px (line width 2 px) for pictures and FID


class ChiroDiffTask(Task):
    name = "chirodiff"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.diffusion = GaussianDiffusion(cfg.diffusion)
        self.lengths = np.array([], dtype=np.int64)  # training-set sequence lengths, for sampling

    def widths(self) -> List[int]:
        return list(range(1, self.cfg.model.hidden_size + 1))

    def build_denoiser(self, width: Optional[int] = None) -> nn.Module:
        return ChiroDiffDenoiser(self.cfg.model if width is None else replace(self.cfg.model, hidden_size=width))

    def load_data(self, progress=None, device=None):
        train, val = load_stroke_splits(self.cfg.data, progress)
        self.lengths = sequence_lengths(train)
        d = self.cfg.data
        return StrokeDataset(train, d.representation, d.feature_scale), StrokeDataset(
            val, d.representation, d.feature_scale
        )

    def collate(self, items):
        return collate_strokes(items)

    def loss(self, model, batch, seeds):
        x, mask = batch["x"], batch["mask"]
        # noise for the longest possible sequence, cropped: a sample's noise must not depend on how far
        # its batch happens to be padded
        t, noise = self.diffusion.draw((len(x), self.cfg.data.max_points, x.shape[2]), seeds, x.device)
        return self.diffusion.loss(
            lambda x_t, t_: model(x_t, t_, mask), x, mask=mask, t=t, noise=noise[:, : x.shape[1]]
        )

    def flops_inputs(self, batch):
        """One sketch of the training set's mean length (rounded): a GRU's FLOPs grow with the length, so this
        is the average cost of a training or sampling pass, the same whichever sketch comes first."""
        x = batch["x"][:1]
        length = max(1, int(round(float(self.lengths.mean())))) if len(self.lengths) else x.shape[1]
        x = torch.zeros(1, length, x.shape[2], dtype=x.dtype, device=x.device)
        return (
            x,
            torch.zeros(1, dtype=torch.long, device=x.device),
            torch.ones(1, length, dtype=torch.bool, device=x.device),
        )

    @torch.no_grad()
    def sample(self, model, num, generator, device, sampling, progress=True) -> Dict[str, np.ndarray]:
        if len(self.lengths) == 0:
            raise RuntimeError("the length distribution is unknown: load the data or a checkpoint's task state first")
        sc = sampling
        picks = torch.randint(0, len(self.lengths), (num,), generator=generator)
        lengths = torch.as_tensor(self.lengths)[picks]
        features = np.zeros((num, int(lengths.max()), self.cfg.model.in_channels), dtype=np.float32)
        for start in range(0, num, sc.batch_size):
            chunk = lengths[start : start + sc.batch_size]
            width = int(chunk.max())
            mask = (torch.arange(width)[None, :] < chunk[:, None]).to(device)
            x = self.diffusion.sample(
                lambda x_t, t: model(x_t, t, mask),
                (len(chunk), width, self.cfg.model.in_channels),
                sampler=sc.sampler,
                steps=sc.steps,
                eta=sc.eta,
                variance_strength=sc.variance_strength,
                mask=mask,
                generator=generator,
                device=device,
                progress=progress,
            )
            features[start : start + len(chunk), :width] = x.float().cpu().numpy()
        return {"features": features, "lengths": lengths.numpy()}

    def sketches(self, samples: Dict[str, np.ndarray]):
        d = self.cfg.data
        return features_to_sketches(
            samples["features"], samples["lengths"], d.representation, d.feature_scale, d.pen_threshold
        )

    def save_picture(self, samples, path) -> None:
        save_sketch_grid(self.sketches(samples), path)

    def to_images(self, samples) -> np.ndarray:
        return render_sketches(self.sketches(samples), size=RENDER_SIZE)[..., None]

    def reference_images(self, split: str = "val") -> np.ndarray:
        train, val = load_stroke_splits(self.cfg.data)
        sketches = {"train": train, "val": val}[split]
        return render_sketches(sketches, size=RENDER_SIZE)[..., None]

    near_copy_kind = "training sketches with every point moved by N(0, (0.5% of the sketch's size)²)"
    # of the sketch's larger bounding-box side: 0.3 px of the 64 px rendering, too little to see. The pixel test
    # catches all at 0.2%, about 3/4 at 0.5% and almost none at 1% (tests/test_eval_memorisation.py)
    JITTER = 0.005

    def near_copies(self, count: int) -> np.ndarray:
        """The first `count` training sketches with a small jitter on every point, rendered as `reference_images`."""
        rng = np.random.default_rng(0)
        jittered = []
        for sketch in load_stroke_splits(self.cfg.data)[0][:count]:
            points = sketch.points.copy()
            size = float(np.ptp(points[:, :2], axis=0).max()) or 1.0
            points[:, :2] += rng.normal(0.0, self.JITTER * size, points[:, :2].shape)
            jittered.append(Sketch(points))
        return render_sketches(jittered, size=RENDER_SIZE)[..., None]

    def reference_key(self, split: str = "val") -> str:
        key = f"{super().reference_key(split)}/render-{RENDER_SIZE}px-line-{default_line_width(RENDER_SIZE):g}px"
        revision = reader_revision(self.cfg.data)
        return key if revision is None else f"{key}/reader-{revision}"

    def data_name(self) -> str:
        return display_name(self.cfg.data)

    def state_dict(self) -> dict:
        return {"lengths": torch.as_tensor(self.lengths, dtype=torch.int64)}  # a tensor: loads with weights_only

    def load_state_dict(self, state: dict) -> None:
        self.lengths = np.asarray(state.get("lengths", []), dtype=np.int64)

"""Block-structured sparsity (sparse/blocks.py, `sparse.block_size`): every method's masks stay unions of b x b
tiles through its updates, with counts in whole tiles; the parts decide on scores pooled per tile; tensors the
tiles do not cover and masks that are not tiles are refused in one line."""

import pytest
import torch
from torch import nn

from sparsedm.errors import UserError
from sparsedm.sparse import SparseConfig, SparseEngine
from sparsedm.sparse.blocks import BlockGrid
from sparsedm.sparse.methods import METHODS

B = 4
SPARSE_METHODS = [m.name for m in METHODS.values() if m.sparse]


class Net(nn.Module):
    """Linear layers and a conv whose 2-D views (out, in·kh·kw) divide by 4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)  # 2-D view (8, 36)
        self.a = nn.Linear(8 * 16, 32)
        self.b = nn.Linear(32, 32)
        self.c = nn.Linear(32, 8)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.c(torch.relu(self.b(torch.relu(self.a(h)))))


def assert_tiled(engine: SparseEngine, block: int) -> None:
    for name, mask in engine.masks.items():
        grid = BlockGrid(mask.shape, block)
        assert grid.is_tiled(mask), name
        assert int(mask.sum()) == engine.nonzeros[name] and engine.nonzeros[name] % (block * block) == 0, name


def train(method: str, steps: int = 12, block: int = B, **sparse):
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = SparseConfig(method=method, sparsity=0.8, update_interval=2, t_end=1.0, block_size=block, **sparse)
    engine = SparseEngine(model, optimizer, config, total_steps=steps)
    assert_tiled(engine, block)
    g = torch.Generator().manual_seed(1)
    updates = []
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(8, 4, 4, 4, generator=g)).pow(2).mean().backward()
        engine.after_backward()
        optimizer.step()
        update = engine.after_optimizer_step()
        if update is not None:
            updates.append((update, {n: m.clone() for n, m in engine.masks.items()}))
            assert_tiled(engine, block)
    return engine, updates


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_every_method_keeps_whole_tiles_with_the_exact_counts(method):
    engine, updates = train(method, initial_sparsity=0.5)
    tiles = {n: grid.tiles for n, grid in engine.grids.items()}
    if not METHODS[method].counts_vary:  # round(density · tiles) tiles per tensor, from the start to the end
        assert engine.nonzeros == {n: round(engine.densities[n] * tiles[n]) * B * B for n in tiles}
    if METHODS[method].sparsity_schedule is not METHODS["rigl"].sparsity_schedule:  # GraNet: S_t in tiles
        assert engine.nonzeros == {n: round(engine.densities[n] * tiles[n]) * B * B for n in tiles}
    if METHODS[method].dynamic:
        assert updates and all(u["replaced"] % (B * B) == 0 for u, _ in updates)
        assert any(u["replaced"] > 0 for u, _ in updates)
        first, last = updates[0][1], updates[-1][1]
        assert any(not torch.equal(first[n], last[n]) for n in first)  # the tiles moved


def test_regrowing_dropped_tiles_keeps_whole_tiles_and_counts_them_in_weights():
    engine, updates = train("rigl", regrow_dropped=True)
    assert all(u["regrown"] % (B * B) == 0 and u["replaced"] % (B * B) == 0 for u, _ in updates)
    assert any(u["replaced"] > 0 for u, _ in updates)


def test_snfs_moves_whole_tiles_between_tensors_and_keeps_the_total():
    start = train("snfs", steps=0)[0].nonzeros
    engine, _ = train("snfs")
    assert sum(engine.nonzeros.values()) == sum(start.values())
    assert engine.nonzeros != start  # density moved, in whole tiles (train checks the tiles after every update)


def test_drop_and_grow_decide_on_scores_summed_per_tile():
    """The active tile of smallest summed |W| goes though it holds the largest weight, and the inactive tile of
    largest summed |dense gradient| comes though another holds the largest entry (a max would choose the other)."""
    torch.manual_seed(0)
    model = nn.Linear(8, 8, bias=False)  # 2 x 2 tiles of 4 x 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = SparseConfig(
        method="rigl", sparsity=0.5, distribution="uniform", update_interval=1, prune_rate=0.5, block_size=4
    )
    engine = SparseEngine(model, optimizer, config, total_steps=10)
    grid = engine.grids["weight"]
    tiles = grid.pool_mask(engine.masks["weight"]).flatten()
    assert int(tiles.sum()) == 2
    (kept, dropped), (left, grown) = tiles.nonzero().squeeze(1), (~tiles).nonzero().squeeze(1)

    def tile(index):
        r, c = divmod(int(index), 2)
        return slice(r * 4, r * 4 + 4), slice(c * 4, c * 4 + 4)

    weight, target = torch.full((8, 8), 0.5), torch.zeros(8, 8)
    weight[tile(dropped)] = 0.01  # summed 15 x 0.01 + 1 = 1.15 < 16 x 0.5
    weight[tile(dropped)][0, 0] = 1.0
    target[tile(grown)] = 0.1  # summed 1.6 > 1
    target[tile(left)][0, 0] = 1.0
    with torch.no_grad():
        model.weight.copy_(weight * engine.masks["weight"])
    optimizer.zero_grad()
    (model.weight * target).sum().backward()  # dL/dW = target
    engine.after_backward()
    optimizer.step()
    engine.after_optimizer_step()
    after = grid.pool_mask(engine.masks["weight"]).flatten()
    assert after[kept] and not after[dropped] and after[grown] and not after[left]
    assert grid.is_tiled(engine.masks["weight"])


def test_a_tensor_the_tiles_do_not_cover_is_refused_in_one_line():
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(8, 8))
    with pytest.raises(UserError) as refused:
        SparseEngine(model, torch.optim.Adam(model.parameters()), SparseConfig(block_size=4), total_steps=10)
    message = str(refused.value)
    assert "\n" not in message
    assert "0.weight of 2-D shape [8, 6] (and 1 other tensors)" in message and "sparse.exclude" in message
    SparseEngine(model, torch.optim.Adam(model.parameters()), SparseConfig(block_size=2), total_steps=10)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(block_size=0), "sparse.block_size=0 is out of range"),
        (dict(kernels="block/block/block"), "uses the block way, which needs tile-structured masks"),
    ],
)
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(UserError, match=message):
        SparseConfig(**values)


def test_masks_that_are_not_tiles_are_refused_on_load():
    engine, _ = train("static", steps=0)
    masks = {n: m.clone() for n, m in engine.masks.items()}
    flat = masks["b.weight"].view(-1)
    on, off = flat.nonzero()[0], (~flat).nonzero()[0]
    flat[on], flat[off] = False, True  # same count, no longer whole tiles
    with pytest.raises(UserError, match="b.weight are not whole sparse.block_size=4 tiles"):
        engine.load_masks(masks)


def test_a_tensor_left_without_a_tile_is_said_in_one_line(caplog):
    # uniform S = 0.95: c.weight (8 x 32) has 2 x 8 = 16 tiles of 4 x 4, round(0.05 * 16) = 1; at S = 0.97, 0
    for sparsity, empty in ((0.95, False), (0.97, True)):
        caplog.clear()
        model = Net()
        config = SparseConfig(method="static", sparsity=sparsity, distribution="uniform", block_size=B)
        with caplog.at_level("WARNING", logger="sparsedm"):
            engine = SparseEngine(model, torch.optim.Adam(model.parameters()), config)
        warned = [r.getMessage() for r in caplog.records if "no active weight" in r.getMessage()]
        assert bool(warned) == empty and (engine.nonzeros["c.weight"] == 0) == empty
        if empty:
            assert len(warned) == 1 and "\n" not in warned[0] and "c.weight" in warned[0]

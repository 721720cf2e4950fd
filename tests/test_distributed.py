"""The data-parallel conventions: ranks split each global batch without overlap or loss."""
import torch

from qbench.distributed import World, current_world, rank_slice


def test_ranks_share_each_global_batch_exactly():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    parts = [rank_slice(x, y, World(rank, 3, rank)) for rank in range(3)]
    assert sorted(torch.cat([p[1] for p in parts]).tolist()) == list(range(10))
    assert all(torch.equal(px.view(-1).long(), py) for px, py in parts)
    whole_x, whole_y = rank_slice(x, y, World())
    assert whole_x is x and whole_y is y


def test_world_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert current_world() == World() and current_world().is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    world = current_world()
    assert world.parallel and not world.is_main and world.size == 4

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


def _step_gradient(rank: int, world_size: int, store: str, out: str) -> None:
    """One rank: LSQ's input quantizer on its slice of a fixed batch, the step gradient
    averaged over the ranks as DDP averages it; rank 0 saves it."""
    import os

    import torch.distributed as dist

    from qbench.quant.lsq import LearnedStepQuantizer
    from qbench.quant.observer import Observation

    if world_size > 1:  # a spawned process: torchrun's environment, then the process group
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)).relu() * 2
    q = LearnedStepQuantizer(3, signed=False, batch_split=True)
    q.initialize(Observation.of(x))
    part = x[rank::world_size]
    (q(part) - part).square().mean().backward()
    grad = q.step.grad.clone()
    if world_size > 1:
        dist.all_reduce(grad)
        grad /= world_size
        dist.destroy_process_group()
    if rank == 0:
        torch.save(grad, out)


def test_the_step_gradient_under_two_gloo_ranks_equals_the_single_process_one(tmp_path):
    import torch.multiprocessing as mp

    _step_gradient(0, 1, "", str(tmp_path / "single.pt"))
    mp.spawn(_step_gradient, args=(2, str(tmp_path / "store"), str(tmp_path / "ranks.pt")), nprocs=2)
    single, ranks = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ranks.pt")
    assert single.abs() > 0
    torch.testing.assert_close(ranks, single)

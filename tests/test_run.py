"""End to end on a tiny slice: every model × method, records, skip, baseline reuse, CLI errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qbench.checkpoint import load_model_state
from qbench.methods import METHODS
from qbench.models import MODELS
from qbench.run import qat_recipe, run

REPO = Path(__file__).resolve().parents[1]
SHRINK = {"adaround": ["method.iterations=2"]}  # methods whose defaults are too long for a smoke test


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_model_and_method_end_to_end(make_config, model, method):
    cfg = make_config(f"model={model}", f"method={method}", "bits=3", *SHRINK.get(method, []))
    record = run(cfg)
    assert record["status"] == "ok"
    assert 0.0 <= record["metrics"]["top1"] <= 100.0
    assert record["metrics"]["top5"] >= record["metrics"]["top1"]
    assert len(record["fp"]["weights_sha256"]) == 64 and record["fp"]["source"] == "trained"
    saved = json.loads((Path(cfg["paths"]["records_dir"]) / f"{record['run_id']}.json").read_text())
    assert saved["metrics"] == record["metrics"]
    for key in ("versions", "git", "seed", "wall_time_s", "config", "host", "device"):
        assert key in saved
    assert saved["versions"]["torch"].startswith("2.14.1")
    assert saved["cpu_kernels"]["capability"] == torch.backends.cpu.get_cpu_capability()
    if METHODS[method].quantizes:
        precision = saved["layer_precision"]
        assert precision[MODELS[model].first_layer] == [8, 8]
        assert precision[MODELS[model].last_layer] == [8, 8]
        assert sorted({tuple(v) for v in precision.values()}) == [(3, 3), (8, 8)]


def test_a_finished_run_is_skipped_and_the_baseline_reused(make_config, capsys):
    cfg = make_config()
    first = run(cfg)
    baselines = list((Path(cfg["paths"]["runs_dir"]) / "baselines").iterdir())
    assert len(baselines) == 1
    stamp = (baselines[0] / "baseline.json").stat().st_mtime_ns
    info = json.loads((baselines[0] / "baseline.json").read_text())
    assert info["cpu_kernels"] == first["cpu_kernels"] and info["cpu_kernels"]["capability"]
    assert run(cfg)["created"] == first["created"]
    assert "already done" in capsys.readouterr().out
    other_bits = run(make_config("bits=2"))
    assert other_bits["run_id"] != first["run_id"]
    assert other_bits["fp"] == first["fp"]
    assert (baselines[0] / "baseline.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    forced = run(make_config("force=true"))
    assert forced["created"] >= first["created"] and forced["run_id"] == first["run_id"]
    # trained again (not resumed from its finished checkpoint and re-evaluated), to the same numbers
    assert forced["resumed_at_epoch"] == 0 and "trains again from the start" in capsys.readouterr().out
    assert forced["metrics"] == first["metrics"]


def test_run_identity_ignores_paths_and_runtime_but_not_results(make_config, tmp_path):
    from qbench.identity import run_id

    base = make_config()
    assert run_id(base) == run_id(make_config("runtime.progress=true", "runtime.log_every=7"))
    assert run_id(base) != run_id(make_config("quant.first_layer.weight_bits=4"))
    assert run_id(make_config("method=fp", "bits=2")) == run_id(make_config("method=fp", "bits=4"))


def test_weight_decay_follows_weight_bits(make_config):
    assert qat_recipe(make_config("bits=2"))["weight_decay"] == 2.5e-5
    assert qat_recipe(make_config("bits=3"))["weight_decay"] == 5.0e-5
    assert qat_recipe(make_config("bits=4"))["weight_decay"] == 1.0e-4


def qbench(*args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "qbench", *args, f"paths.runs_dir={tmp_path}/runs",
                           f"paths.records_dir={tmp_path}/records"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["model=vgg16"], "model=vgg16 is unknown; allowed: efficientnet_b0, mixnet_s, mobilenet_v2, resnet18"),
    (["method=magic"], "method=magic is unknown; allowed:"),
    (["bits=9"], "wbits=9 is not allowed; use an integer from 2 to 8"),
    (["bits=1"], "wbits=1 is not allowed"),
    (["abits=four"], "abits='four' is not allowed"),
    (["recipe.batch_size=0"], "recipe.batch_size=0 is not allowed; use an integer ≥ 1"),
    (["recipe.qat.epochs=-1"], "recipe.qat.epochs=-1 is not allowed; use an integer ≥ 0"),
    (["dataset=imagenet"], "dataset.root must be set"),
    (["model.weights=/nonexistent.pt"], "model.weights=/nonexistent.pt is not a file"),
    (["+method.colour=red"], "method.colour is not an option of method lsq"),
    (["method=lsqplus", "method.config=7"], "method.config=7 is not allowed for method lsqplus; use 1, 2, 3 or 4"),
    (["method=lsqplus", "method.offset=median"], "method.offset='median' is not allowed"),
    (["method=apot", "method.levels=lloyd"], "method.levels='lloyd' is not allowed"),
    (["bits=0"], "wbits=0 is not allowed; use an integer from 2 to 8"),
    (["bits=four"], "wbits='four' is not allowed; use an integer from 2 to 8"),
    (["wbits=1"], "wbits=1 is not allowed; use an integer from 2 to 8"),
    (["abits=12"], "abits=12 is not allowed; use an integer from 2 to 8"),
    (["quant.first_layer.weight_bits=16"], "quant.first_layer.weight_bits=16 is not allowed"),
    (["dataset=svhn"], "dataset=svhn is unknown; allowed: cifar10, fashion_mnist, imagenet"),
    (["recipe=fast"], "recipe=fast is unknown; allowed:"),
    (["experiment=lsq_vgg"], "experiment=lsq_vgg is unknown; allowed:"),
    (["recipe.fp.epochs=-2"], "recipe.fp.epochs=-2 is not allowed; use an integer ≥ 0"),
    (["recipe.eval_batch_size=0"], "recipe.eval_batch_size=0 is not allowed; use an integer ≥ 1"),
    (["recipe.qat.lr=0"], "recipe.qat.lr=0 is not allowed; use a number > 0"),
    (["model=mixnet_s", "model.fp_lr=-0.1"], "model.fp_lr=-0.1 is not allowed; use a number > 0"),
    (["recipe.qat.schedule=zigzag"], "recipe.qat.schedule='zigzag' is not allowed; use one of cosine,"),
    (["recipe.qat.optimizer=lion"], "recipe.qat.optimizer='lion' is not allowed; use one of sgd, adamw"),
    (["calib.num_images=0"], "calib.num_images=0 is not allowed; use an integer ≥ 1"),
    (["dataset=imagenet", "dataset.root=/nonexistent"], "dataset.root=/nonexistent is not a folder with train/"),
    (["model.weights={tmp}/corrupt.pt"], "is not a readable PyTorch state dict"),
    *[([f"method={m}", "method.act_signed=maybe"], f"method.act_signed='maybe' is not allowed for method {m}; use true")
      for m in ("lsq", "lsqplus", "apot", "faq", "ptq_nearest", "attention_round")],
    (["method=fp", "+method.act_signed=maybe"], "method.act_signed is not an option of method fp"),
    (["method=apot", "method.act_signed=auto"], "method.act_signed='auto' is not allowed for method apot; use true or false"),
    (["method=lsqplus", "method.act_signed=auto"], "method.act_signed='auto' is not allowed for method lsqplus"),
    (["method=apot", "method.weight_grad_outside=2"], "method.weight_grad_outside=2 is not allowed for method apot; use auto, 0 or 1"),
    (["quant.skip_layers=[layer9.conv]"], "quant.skip_layers names 'layer9.conv', which is not a conv/linear layer of resnet18"),
    (["-m", "method=lsqplus", "method.offset=learned,learnd"],
     "method.offset='learnd' is not allowed for method lsqplus; use zero, learned, xmin or null (sweep cell: method.offset=learnd)"),
    (["runtime.device=tpu"], "runtime.device='tpu' is not allowed; use auto, cpu or cuda"),
    (["runtime.progress=yes"], "runtime.progress='yes' is not allowed; use true or false"),
    (["runtime.compile_quantizers=1"], "runtime.compile_quantizers=1 is not allowed; use true or false"),
    (["runtime.log_every=0"], "runtime.log_every=0 is not allowed; use an integer ≥ 1"),
    (["runtime.native_kernels=yes"], "runtime.native_kernels='yes' is not allowed; use true or false"),
    (["runtime.fuse_batch_norm=on"], "runtime.fuse_batch_norm='on' is not allowed; use true or false"),
    (["runtime.recompute_weights=1"], "runtime.recompute_weights=1 is not allowed; use true or false"),
    (["runtime.fuse_batch_norm=true", "+recipe.qat.sync_batchnorm=true"],
     "runtime.fuse_batch_norm=true is not allowed with recipe.qat.sync_batchnorm=true"),
    (["retries=-1"], "retries=-1 is not allowed; use an integer ≥ 0"),
    (["seeds=0"], "seeds='0' is not allowed; use an integer ≥ 1"),
    (["recipe=local_short_bn_clip", "recipe.qat.grad_clip_norm=0"],
     "recipe.qat.grad_clip_norm=0 is not allowed; use a number > 0"),
    (["+recipe.qat.warmup_epochs=ten"],
     "recipe.qat.warmup_epochs='ten' is not allowed; use a number > 0"),
])
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    """In-process (``qbench.cli.main`` as the console script calls it): any exception but the
    exit would fail the test, as a traceback would fail it in a shell."""
    from qbench.cli import main

    (tmp_path / "corrupt.pt").write_bytes(b"not a state dict")
    argv = ["runtime.device=cpu", *(a.format(tmp=tmp_path) for a in args),
            f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["qbench", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qbench: error: ") and message in lines[0], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]


def test_bad_input_from_the_shell_is_one_line_without_traceback(tmp_path):
    result = qbench("runtime.device=cpu", "method=lsqplus", "method.config=7", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "qbench: error: method.config=7 is not allowed for method lsqplus; use 1, 2, 3 or 4"
    assert not (tmp_path / "records").exists() and not (tmp_path / "runs").exists()


def test_identity_uses_the_options_as_the_method_resolves_them(make_config):
    from qbench.identity import run_id
    from qbench.methods import create_method

    def rid(*overrides):
        cfg = make_config("method=lsqplus", *overrides)
        return run_id({**cfg, "method": create_method(cfg["method"]).options()})

    assert rid("method.config=4") == rid("method.config=4", "method.offset=learned", "method.act_signed=false")
    assert rid("method.config=4") != rid("method.config=3")


APOT_CHAIN = ["method=apot", "method.progressive_from=3", "recipe=local_short_bn"]


def test_the_progressive_apot_chain_runs_the_wider_run_first_and_starts_from_it(make_config, monkeypatch):
    loaded = []

    def spy(path, model):
        load_model_state(path, model)
        loaded.append({k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)})

    monkeypatch.setattr("qbench.run.load_model_state", spy)
    narrower = run(make_config(*APOT_CHAIN, "bits=2"))
    assert narrower["status"] == "ok" and narrower["config"]["wbits"] == 2
    records = Path(make_config()["paths"]["records_dir"])
    wider = json.loads((records / f"{narrower['started_from']}.json").read_text())
    assert wider["status"] == "ok" and wider["config"]["wbits"] == 3 and "started_from" not in wider
    wider_state = torch.load(Path(make_config()["paths"]["runs_dir"]) / "runs" / wider["run_id"] / "checkpoint.pt",
                             weights_only=True)["model"]
    tensors = {k: v for k, v in wider_state.items() if isinstance(v, torch.Tensor)}
    assert len(loaded) == 1 and tensors.keys() == loaded[0].keys()
    assert all(torch.equal(loaded[0][k], v) for k, v in tensors.items())
    assert run(make_config(*APOT_CHAIN, "bits=3"))["created"] == wider["created"]  # done: not run again


def test_a_cell_whose_wider_run_does_not_end_ok_is_recorded_failed_without_starting(make_config, monkeypatch):
    started = []

    def diverges(cell, attempt=1, start_over=False):
        started.append(cell.cfg["wbits"])
        return {"run_id": cell.run_id, "status": "diverged"}

    monkeypatch.setattr("qbench.run.execute", diverges)
    record = run(make_config(*APOT_CHAIN, "bits=2"))
    assert started == [3]
    assert record["status"] == "failed" and record["attempts"] == 0
    assert record["error"].startswith("it starts from run ") and record["error"].endswith("which ended diverged")


def test_a_dry_run_says_which_wider_run_runs_first(make_config, capsys):
    record = run(make_config(*APOT_CHAIN, "bits=2", "dry_run=true"))
    line = capsys.readouterr().out.strip()
    assert record["status"] == "dry_run" and line.startswith(f"[qbench] dry run: {record['run_id']} new")
    assert "W2A2" in line and line.endswith("W3A3 seed 0, new), which runs first)")
    assert not Path(make_config()["paths"]["runs_dir"]).exists()


def test_a_cell_waits_while_another_process_holds_its_lock(make_config, monkeypatch):
    import threading

    from filelock import FileLock

    from qbench.sweep import prepare_cell

    cfg = make_config("method=lsq")
    cell = prepare_cell(cfg)
    started = threading.Event()
    monkeypatch.setattr("qbench.run.execute", lambda cell, attempt=1, start_over=False: started.set() or {"status": "ok"})
    cell.run_dir.parent.mkdir(parents=True)
    with FileLock(str(cell.run_dir.parent / f"{cell.run_id}.lock")):
        worker = threading.Thread(target=run, args=(cfg,))
        worker.start()
        assert not started.wait(1.0)  # blocked by the lock
    worker.join(10)
    assert started.is_set() and not worker.is_alive()


def test_a_wider_run_whose_checkpoint_is_gone_is_one_line(make_config):
    import shutil

    from qbench.validate import ConfigError

    wider = run(make_config(*APOT_CHAIN, "bits=3"))
    shutil.rmtree(Path(make_config()["paths"]["runs_dir"]) / "runs" / wider["run_id"])
    with pytest.raises(ConfigError, match=f"starts from run {wider['run_id']}, whose record says ok but whose "
                                          "checkpoint .* is missing: run that one again with force=true"):
        run(make_config(*APOT_CHAIN, "bits=2"))


def test_a_diverged_cell_is_a_result_skipped_until_forced(make_config, capsys):
    cfg = make_config("method=lsq")
    first = run(cfg)
    path = Path(cfg["paths"]["records_dir"]) / f"{first['run_id']}.json"
    diverged = {**first, "status": "diverged", "metrics": None, "reason": "loss became nan in epoch 1"}
    path.write_text(json.dumps(diverged))
    capsys.readouterr()
    again = run(cfg)
    assert again["status"] == "diverged" and again["created"] == first["created"]
    assert "already diverged: loss became nan in epoch 1" in capsys.readouterr().out
    run(make_config("method=lsq", "dry_run=true"))
    assert f"{first['run_id']} diverged" in capsys.readouterr().out
    forced = run(make_config("method=lsq", "force=true"))
    assert forced["status"] == "ok" and forced["metrics"] == first["metrics"]


def test_a_finished_cell_is_skipped_without_a_lock_file(make_config):
    cfg = make_config("method=lsq")
    first = run(cfg)
    runs = Path(make_config()["paths"]["runs_dir"]) / "runs"
    (runs / f"{first['run_id']}.lock").unlink()
    assert run(cfg)["created"] == first["created"]
    assert not (runs / f"{first['run_id']}.lock").exists()

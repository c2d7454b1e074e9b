"""Domain pretraining as a job: exact resume after SIGKILL, corrupt samples skipped and counted, kept checkpoints.

The one-process run and the skip-when-current check are in tests/test_end_to_end.py.
"""

import argparse
import io
import itertools
import signal
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from e4t import load_base, load_pack
from pretrain.checkpoint import LossLog, checkpoint_tags, prune_checkpoints, read_loss_log
from pretrain.domain import DomainTrainConfig, add_arguments, config_from_args, stale_checkpoints, worker_argv
from shards.reader import CountingHandler, make_loader, make_pipeline, shard_urls

ROOT = Path(__file__).resolve().parents[2]


def corrupt_shard(tar_path: Path, truncate: str, bad_json: str) -> None:
    """Rewrite a shard with member `truncate` cut to half its bytes and member `bad_json` made invalid JSON."""
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    names = {m.name for m, _ in members}
    assert {truncate, bad_json} <= names, "the members to corrupt must exist"
    with tarfile.open(tar_path, "w") as dst:
        for member, data in members:
            if member.name == truncate:
                data = data[: len(data) // 2]
            elif member.name == bad_json:
                data = b'{"caption": "a photo of a face", "split": '
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory):
    """One shard of the pretraining split (32 samples) with a truncated PNG and a JSON cut short."""
    from shards.synth import synthesize

    out = tmp_path_factory.mktemp("corrupt_shards")
    manifest = synthesize("faces", 40, 2, 64, 0, out, splits=["pretrain"], progress=False)
    assert manifest["num_samples"] == 32
    tar = out / manifest["shards"][0]["file"]
    keys = [n[: -len(".png")] for n in tarfile.open(tar).getnames() if n.endswith(".png")]
    corrupt_shard(tar, truncate=f"{keys[3]}.png", bad_json=f"{keys[7]}.json")
    return out


def test_a_corrupt_png_and_bad_json_are_skipped_and_counted(corrupt_shards):
    handler = CountingHandler()
    pipe = make_pipeline(shard_urls(corrupt_shards), batch_size=5, image_size=16, handler=handler, shuffle=0)
    metas = [m for batch in pipe for m in batch["meta"]]
    assert len(metas) == 30 and handler.count == 2
    assert sorted(e.split("(")[1].split(")")[0] for e in handler.errors) == ["json", "png"], handler.errors
    assert any("truncated" in e for e in handler.errors), handler.errors
    assert pipe.position.samples == 31  # the bad JSON never reaches the split filter's output: no split


def test_a_resumed_stream_continues_where_the_first_stopped(corrupt_shards):
    """Batch k of a (seed, rank) stream does not depend on where it was resumed; bad samples are not counted twice."""
    kw = dict(batch_size=3, image_size=16, resampled=True, augment=True, seed=5, world_size=2, rank=1, shuffle=20)
    total, stop = 30, 11  # several passes over the shard: every corrupt member met, before and after the stop
    first = make_pipeline(shard_urls(corrupt_shards), **kw)
    it = iter(first)
    before = [next(it) for _ in range(stop)]
    at_stop, bad_at_stop = first.position.samples, first.handler.count
    after = [next(it) for _ in range(total - stop)]

    resumed = make_pipeline(shard_urls(corrupt_shards), **kw, skip=at_stop)
    resumed.handler.count = bad_at_stop  # what a checkpoint restores
    rest = list(itertools.islice(resumed, total - stop))
    for a, b in zip(after, rest, strict=True):
        assert [m["identity"] + str(m["view"]) for m in a["meta"]] == [
            m["identity"] + str(m["view"]) for m in b["meta"]
        ]
        assert torch.equal(a["pixels"], b["pixels"]), "augmentation must follow the sample's place in the stream"
    assert resumed.handler.count == first.handler.count > bad_at_stop > 0
    assert before[0]["pixels"].shape == (3, 3, 16, 16)


def test_ranks_and_workers_get_distinct_streams(corrupt_shards):
    def first_batch(rank: int, world: int, workers: int) -> list[torch.Tensor]:
        loader = make_loader(
            shard_urls(corrupt_shards),
            batch_size=4,
            image_size=16,
            resampled=True,
            augment=True,
            world_size=world,
            rank=rank,
            num_workers=workers,
        )
        return [b["pixels"] for b in itertools.islice(loader, workers)]

    two_workers = first_batch(0, 2, 2)
    streams = [*two_workers, *first_batch(1, 2, 2)]  # rank 0 worker 0 and 1, rank 1 worker 0 and 1
    for a, b in itertools.combinations(streams, 2):
        assert not torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(two_workers, first_batch(0, 2, 2), strict=True)), "deterministic"


def test_job_options_reach_the_ranks_and_bad_values_are_usage_errors():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--base", "b", "--shards", "s", "--out", "o.safetensors", "--preset", "tiny"]
    args = parser.parse_args(
        [*base, "--zero-stage", "1", "--precision", "bf16", "--grad-accum", "3", "--keep-checkpoints", "2"]
    )
    cfg = config_from_args(args)
    assert (cfg.zero_stage, cfg.precision, cfg.grad_accum, cfg.keep_checkpoints) == (1, "bf16", 3, 2)
    assert config_from_args(parser.parse_args(worker_argv(args))) == cfg
    for bad, message in ((["--grad-accum", "0"], "grad_accum"), (["--keep-checkpoints", "0"], "keep_checkpoints")):
        with pytest.raises(ValueError, match=message):
            config_from_args(parser.parse_args([*base, *bad]))
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--zero-stage", "3"])


def test_pruning_keeps_the_newest_tags_and_a_resumed_loss_log_drops_what_the_killed_run_did_not_save(tmp_path):
    for step in (2, 4, 10, 6, 8):
        (tmp_path / f"step{step}").mkdir()
    (tmp_path / "tensorboard").mkdir()
    assert prune_checkpoints(tmp_path, 2) == ["step2", "step4", "step6"]
    assert checkpoint_tags(tmp_path) == ["step8", "step10"] and (tmp_path / "tensorboard").is_dir()
    with pytest.raises(ValueError, match="at least 1"):
        prune_checkpoints(tmp_path, 0)

    log = LossLog(tmp_path / "loss.jsonl", 0)
    for step in range(1, 6):
        log.write(step=step, loss=float(step))
    log.close()
    with (tmp_path / "loss.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a line cut by SIGKILL
    assert [line["step"] for line in read_loss_log(tmp_path / "loss.jsonl")] == [1, 2, 3, 4, 5]
    resumed = LossLog(tmp_path / "loss.jsonl", 3)  # the checkpoint was at step 3
    resumed.write(step=4, loss=0.5)
    resumed.close()
    assert [(line["step"], line["loss"]) for line in read_loss_log(tmp_path / "loss.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 0.5),
    ]


def popen(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank at once; torch's launcher starts each rank in a session of its own."""
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.communicate()


def run(cmd) -> str:
    proc = popen(cmd)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_on_the_unkilled_loss_curve(
    tiny_base_dir, corrupt_shards, tmp_path, pretrain_domain_cmd
):
    steps = 16
    options = ["--steps", str(steps), "--checkpoint-every", "2", "--keep-checkpoints", "2"]

    # 1. the reference: two ranks, never stopped
    reference = tmp_path / "reference.safetensors"
    run(pretrain_domain_cmd(tiny_base_dir, corrupt_shards, reference, *options, num_procs=2))

    # 2. the same run, SIGKILLed (launcher and ranks at once) after its second checkpoint
    out = tmp_path / "killed.safetensors"
    cmd = pretrain_domain_cmd(tiny_base_dir, corrupt_shards, out, *options, num_procs=2)
    proc = popen(cmd)
    work = out.with_suffix(".work")
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if (work / "latest").is_file() and (work / "latest").read_text().strip() not in ("", "step2"):
            break
        time.sleep(0.05)
    kill_job(proc)
    assert not out.exists(), "the run finished before the kill: nothing was tested"
    killed_at = int((work / "latest").read_text().strip().removeprefix("step"))
    assert 4 <= killed_at < steps
    cfg = replace(DomainTrainConfig.preset("tiny"), steps=steps, checkpoint_every=2, keep_checkpoints=2)
    assert not stale_checkpoints(work, tiny_base_dir, [corrupt_shards], cfg, "faces")

    # 3. resumed: the same loss at every step as the unkilled run, the same bad samples counted
    log = run(cmd)
    assert f"resuming from step {killed_at}" in log
    expected = read_loss_log(reference.with_suffix(".work") / "loss.jsonl")
    got = read_loss_log(work / "loss.jsonl")
    assert [line["step"] for line in got] == [line["step"] for line in expected] == list(range(1, steps + 1))
    worst = max(abs(g["loss"] - e["loss"]) / e["loss"] for g, e in zip(got, expected, strict=True))
    # the target is 5%; the data position, RNG, optimizer and schedule all resume, so the curves are the same
    assert worst <= 1e-6, f"after resuming, the loss strays {worst:.2e} (relative) from the unkilled run's"
    assert [g["bad_samples"] for g in got] == [e["bad_samples"] for e in expected]
    assert checkpoint_tags(work) == [f"step{steps - 2}", f"step{steps}"]

    base = load_base(tiny_base_dir)
    pack, ref_pack = load_pack(out, base), load_pack(reference, base)
    assert pack.step == steps and pack.training["world_size"] == 2
    assert pack.training["bad_samples"] == ref_pack.training["bad_samples"] > 0


@pytest.mark.slow
# stage 2 is the kill test's; stage 1 runs DeepSpeed's same optimizer class with gradients unsharded
@pytest.mark.parametrize(("stage", "precision", "accum"), [("0", "bf16", "2")])
def test_zero_stages_precisions_and_accumulation_train(
    tiny_base_dir, corrupt_shards, tmp_path, pretrain_domain_cmd, stage, precision, accum
):
    out = tmp_path / "faces.safetensors"
    options = ["--steps", "3", "--zero-stage", stage, "--precision", precision, "--grad-accum", accum]
    run(pretrain_domain_cmd(tiny_base_dir, corrupt_shards, out, *options))
    pack = load_pack(out, load_base(tiny_base_dir))
    config = pack.training["config"]
    assert (config["zero_stage"], config["grad_accum"], pack.training["precision"]) == (
        int(stage),
        int(accum),
        precision,
    )
    losses = read_loss_log(out.with_suffix(".work") / "loss.jsonl")
    assert [line["step"] for line in losses] == [1, 2, 3] and all(0 < line["loss"] < 10 for line in losses)
    assert any(v.abs().sum() > 0 for v in pack.offsets.values()), "the offsets must have trained"

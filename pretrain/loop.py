"""The one training loop of the base's stages: resume, step, clip, EMA, checkpoint, loss curve."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from pretrain import checkpoint as ck

if TYPE_CHECKING:
    from pretrain.base import BaseTrainConfig

StepCallback = Callable[[str, int], None]


def train_loop(
    stage: str,
    ckpt: Path,
    key: str,
    cfg: BaseTrainConfig,
    steps: int,
    models: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    batches: Callable[[int], Iterator[Any]],
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    *,
    ema: EMAModel | None = None,
    params: list | None = None,
    progress: bool,
    callback: StepCallback | None,
) -> dict[str, Any]:
    """The one training loop: resume, step, clip, EMA, checkpoint every `cfg.checkpoint_every` steps."""
    params = params or [p for m in models.values() for p in m.parameters()]
    start, state = 0, ck.load_checkpoint(ckpt)
    if state is not None and state.get("key") == key:  # a checkpoint of other inputs/config is stale
        for name, model in models.items():
            model.load_state_dict(state["models"][name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
            ema.to(params[0].device)  # the checkpoint loads onto the CPU; a CUDA run's EMA must follow its weights
        ck.restore_rng(state["rng"])
        start = state["step"]
    for model in models.values():
        model.train()
    stream, smooth, t0 = batches(start), math.nan, time.perf_counter()
    curve = ckpt.with_name("curve.jsonl")  # the loss curve, appended every 50 steps (README figures)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, disable=not progress)
    for step in bar:
        loss, logs = loss_fn(next(stream))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage}: loss should be finite but is {loss.item()} at step {step}.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        smooth = loss.item() if math.isnan(smooth) else 0.98 * smooth + 0.02 * loss.item()
        logs = {"loss": smooth, **logs}
        bar.set_postfix(lr=f"{sched.get_last_lr()[0]:.1e}", **{k: f"{v:.4f}" for k, v in logs.items()})
        done = step + 1
        if done % 50 == 0 or done == steps:
            with curve.open("a") as f:
                f.write(json.dumps({"step": done, "s": round(time.perf_counter() - t0, 1), **logs}) + "\n")
        if done % cfg.checkpoint_every == 0 and done < steps:
            ck.save_checkpoint(
                ckpt,
                {
                    "key": key,
                    "stage": stage,
                    "step": done,
                    "config": asdict(cfg),
                    "models": {n: m.state_dict() for n, m in models.items()},
                    "optimizer": opt.state_dict(),
                    "lr_scheduler": sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": ck.capture_rng(),
                },
            )
        if callback is not None:
            callback(stage, done)
    seconds = time.perf_counter() - t0
    return {"resumed_from": start, "final_loss": smooth, "s_per_step": seconds / max(1, steps - start)}

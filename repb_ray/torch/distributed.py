"""gather_observations: every rank gets all ranks' (steps, ids) and scores, as two collectives;
end_process_group: the clean end of a script whose trainer started DDP. Runs in each rank."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def gather_observations(steps: np.ndarray, ids: np.ndarray, scores: np.ndarray, device=None):
    """All-gather of this rank's observations. The int64 (steps, ids) and the float32 scores travel in
    separate collectives, so ids stay exact at any size. Ranks may hold different counts.
    Without an initialised process group it returns the inputs."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return steps, ids, scores
    device = device or (torch.device("cuda", torch.cuda.current_device())
                        if dist.get_backend() == "nccl" else torch.device("cpu"))
    world = dist.get_world_size()
    n = torch.tensor([ids.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    keys = torch.zeros((2, m), dtype=torch.int64, device=device)
    keys[0, : ids.shape[0]] = torch.from_numpy(np.ascontiguousarray(steps))
    keys[1, : ids.shape[0]] = torch.from_numpy(np.ascontiguousarray(ids))
    vals = torch.zeros(m, dtype=torch.float32, device=device)
    vals[: ids.shape[0]] = torch.from_numpy(np.ascontiguousarray(scores))
    all_keys = [torch.empty_like(keys) for _ in range(world)]
    all_vals = [torch.empty_like(vals) for _ in range(world)]
    dist.all_gather(all_keys, keys)
    dist.all_gather(all_vals, vals)
    out_steps = np.concatenate([k[0, :s].cpu().numpy() for k, s in zip(all_keys, sizes)])
    out_ids = np.concatenate([k[1, :s].cpu().numpy() for k, s in zip(all_keys, sizes)])
    out_scores = np.concatenate([v[:s].cpu().numpy() for v, s in zip(all_vals, sizes)])
    return out_steps, out_ids, out_scores


def end_process_group() -> None:
    """End this process's default process group cleanly, once, at the end of a script whose trainer
    started DDP itself (Lightning and the Hugging Face Trainer leave it alive): a barrier, so the rank
    that hosts the rendezvous store outlives every other rank's last use of it, then
    destroy_process_group, so gloo's threads are joined now rather than torn down at interpreter exit
    (where they can abort the process: "terminate called without an active exception", SIGABRT, in
    about one run out of four on 2 CPUs). A no-op without an initialised group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

"""Several processes for stage 2:  torchrun --nproc_per_node N -m asru_min.train [the same flags].

torchrun starts N copies of the command and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each
one's environment; `init` joins them into one process group (NCCL on CUDA, gloo on the CPU). Everything else asks
the questions below, and without torchrun every answer is the one-process one: rank 0 of 1, a barrier that
returns at once, a sum over one rank. Who does what (train.py, grpo.py): rank 0 evaluates, runs stage 1 and writes
every file; in GRPO each rank generates, scores and trains on its own block of each step's prompts, and
DistributedDataParallel sums the adapter gradients during backward.
"""

import datetime
import os
import shutil

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# Rank 0 evaluates and runs stage 1 alone while the other ranks wait at a barrier: far longer than the default
# collective timeout (10 min with NCCL).
WAIT = datetime.timedelta(hours=6)


def init(device: str) -> None:
    """Join torchrun's process group; nothing without torchrun. On CUDA each rank drives GPU LOCAL_RANK, which
    becomes the current device, so --device cuda places every rank's model on its own GPU."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    cuda = device.startswith("cuda")
    if cuda and device != "cuda":
        raise ValueError(f"under torchrun give --device cuda (each rank takes GPU LOCAL_RANK), not {device!r}")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=WAIT)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that evaluates, prints and writes files."""
    return rank() == 0


def write_atomic(path: str, write) -> None:
    """write(tmp) then os.replace(tmp, path), so a reader (or a resumed run) finds the old file or folder or the
    new one, never half of one; on rank 0 alone (the other processes hold the same data). Every file of a run,
    and of a pretraining checkpoint, is written here."""
    if not is_main():
        return
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    if os.path.isdir(path):  # os.replace cannot replace a non-empty folder: that one is removed first
        shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def block(items: list) -> list:
    """This rank's contiguous block of items: rank r of W takes items[n r / W : n (r + 1) / W] (sizes differ by
    at most one; concatenating the blocks in rank order gives items back)."""
    n, r, w = len(items), rank(), world_size()
    return items[n * r // w : n * (r + 1) // w]


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of numbers over the ranks (float64)."""
    if world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_true(flag: bool) -> bool:
    """Whether flag holds on every rank: one decision for all (e.g. skipping a step with a non-finite loss, which
    must be taken before any rank calls backward, where DistributedDataParallel waits for every rank)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather(obj) -> list:
    """Every rank's obj (picklable), in rank order, on every rank; [obj] in one process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """model wrapped in DistributedDataParallel when several processes train it; model itself in one process.
    DDP averages over the ranks the gradients of the parameters that require one (the LoRA adapters; frozen
    weights are left alone) during backward, and broadcasts rank 0's parameters once here (all of them), so every
    rank starts from the same adapter. Its forward is model's forward: call it for the pass whose loss is
    backpropagated; the model's other methods (generate, encode_images) and no-grad passes go to model directly."""
    if world_size() == 1:
        return model
    device_ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
    return DistributedDataParallel(model, device_ids=device_ids)

"""The plumbing of a training run: processes, device, precision, random streams, run-folder lock.

    runtime = Runtime.start(device="auto", precision="auto")   # joins the process group under torchrun
    net = runtime.distribute(model)                            # DistributedDataParallel when several
    loss = runtime.mean(loss)                                   # averaged over processes
    state = runtime.rng_state()                                 # every random stream of this process
    runtime.stop()

Several processes (`torchrun --nproc_per_node N train.py ...`) use DistributedDataParallel over
gloo (CPU) or NCCL (CUDA); each process draws its own data with its own random streams, so all of
them are saved in a checkpoint and restored on resume. Only process 0 (`is_main`) writes files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imnet.precision import resolve_device, resolve_precision

__all__ = ["Runtime", "RunFolderBusy", "lock_run_folder"]


class RunFolderBusy(RuntimeError):
    """Another training process is writing to the same run folder."""


@dataclass
class Runtime:
    """This process's place in a run: rank, world size, device and precision."""

    rank: int
    world_size: int
    device: torch.device
    precision: str  # "bf16" or "fp32", resolved for this device (imnet.precision)
    _lock: Any = field(default=None, repr=False)
    _made: Path | None = field(default=None, repr=False)  # the outermost folder lock() had to create

    @classmethod
    def start(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        """Resolve device and precision; join the process group when started by torchrun."""
        device_ = resolve_device(device)
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        rank = 0
        if world_size > 1:
            rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
            if device_.type == "cuda":
                device_ = torch.device("cuda", local_rank)
                torch.cuda.set_device(device_)
                dist.init_process_group("nccl", device_id=device_)
            elif device_.type == "cpu":
                dist.init_process_group("gloo")
            else:
                raise ValueError(f"several processes need --device cpu or cuda, not {device_.type}")
        chosen = resolve_precision(device_, precision)
        if world_size > 1 and precision == "auto":
            # Each process measured its own CPU; one that chose bf16 beside one in fp32 would train
            # two different networks under one all-reduce. bf16 only where every process chose it.
            flag = torch.tensor([1 if chosen == "bf16" else 0], device=device_)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            chosen = "bf16" if flag.item() else "fp32"
        return cls(rank, world_size, device_, chosen)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def stop(self) -> None:
        """Leave the process group and release the run folder.

        A folder that `lock` created and the run left empty (refused while reading its data, codes
        or checkpoints) is removed again, so a run that never started leaves nothing behind."""
        if self._lock is not None:
            lock_file = Path(self._lock.name).absolute()
            unused = self._made is not None and [p.name for p in lock_file.parent.iterdir()] == [lock_file.name]
            if unused:
                lock_file.unlink()  # while still held: no other run can be using the folder
            self._lock.close()
            self._lock = None
            folder = lock_file.parent
            while unused:
                try:
                    folder.rmdir()
                except OSError:  # not empty after all: another run's files arrived meanwhile
                    break
                unused, folder = folder != self._made, folder.parent
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def lock(self, out_dir: Path) -> None:
        """Hold the run folder for this run (process 0 only); see `lock_run_folder`."""
        if self.is_main:
            missing = [p for p in (Path(out_dir).absolute(), *Path(out_dir).absolute().parents) if not p.exists()]
            self._lock = lock_run_folder(out_dir)
            self._made = missing[-1] if missing else None

    # Several processes ---------------------------------------------------------------------------

    def distribute(self, module: nn.Module) -> nn.Module:
        """`module` wrapped for data parallelism when there are several processes."""
        if self.world_size == 1:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over processes (itself with one process)."""
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)  # a sum: gloo has no average
            value = value / self.world_size
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a CPU tensor over processes."""
        if self.world_size > 1:
            on_device = value.to(self.device)
            dist.all_reduce(on_device)
            value = on_device.cpu()
        return value

    def gather(self, obj: Any) -> list:
        """`obj` of every process, in rank order."""
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def parameters_in_sync(self, model: nn.Module) -> str:
        """sha256 of the parameters, checked to be the same in every process."""
        digest = hashlib.sha256()
        for p in model.parameters():
            digest.update(p.detach().float().cpu().numpy().tobytes())
        digests = self.gather(digest.hexdigest())
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter digests differ between processes: {digests}")
        return digests[0]

    # Random streams -------------------------------------------------------------------------------

    def seed(self, seed: int) -> None:
        """Seed python, numpy and torch (CPU and every GPU) of this process."""
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def rng_state(self) -> dict[str, Any]:
        """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":  # this process's GPU only: touching others would start a context on each
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        elif self.device.type == "mps":
            state["mps"] = torch.mps.get_rng_state()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
        numpy = state["numpy"]
        np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                             numpy["has_gauss"], numpy["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
        elif self.device.type == "mps" and "mps" in state:
            torch.mps.set_rng_state(state["mps"])


def lock_run_folder(out_dir: Path):
    """An exclusive lock on `out_dir/.lock`, held until the returned file is closed.

    Two runs writing one folder would interleave metrics.csv and overwrite each other's
    checkpoints. The lock is an OS file lock (`fcntl.flock`), so it is released when the process
    ends however it ends; the file records the holder (host and process id) for the message.

    Raises:
        RunFolderBusy: another process holds the folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderBusy(
            f"{out_dir} is in use by another training run ({holder}); wait for it to finish, stop it, "
            "or choose another --out-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle

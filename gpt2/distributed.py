"""Where each process of a training run stands: its device (and that device's peak FLOP/s and
memory), and under ``torchrun`` its rank among the others, each driving one device (NCCL on
GPUs, gloo on CPUs) with the model wrapped in DistributedDataParallel or sharded with FSDP. For
one process the collective parts are no-ops. Used by ``gpt2/train.py``."""

import contextlib
import os

import torch

from .options import resolve_device

# Dense bf16 tensor-core peak, FLOP/s, from the vendors' data sheets (for MFU). Matched in order
# against torch.cuda.get_device_name(); an unlisted GPU gets no MFU unless --peak-flops says.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
)


class Dist:
    """Where this process stands: rank, world size, device; a no-op for one process."""

    def __init__(self, device_arg, fsdp):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_main = local_rank == 0  # the first process of its machine
        device = resolve_device(device_arg)
        if device.type == "cuda":
            if "LOCAL_RANK" in os.environ:
                device = torch.device("cuda", local_rank)  # torchrun: one GPU a process
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            if device.index >= torch.cuda.device_count():
                raise RuntimeError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
            torch.cuda.set_device(device)
        self.device = device
        if fsdp and self.world == 1 and "RANK" not in os.environ:
            raise ValueError("--fsdp shards the model across processes: launch with torchrun (e.g. --nproc_per_node 8)")
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.enabled:
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, **kwargs)

    @property
    def main(self):
        return self.rank == 0

    def peak_flops(self, precision):
        """The device's peak FLOP/s for MFU; None where it is not known."""
        if self.device.type != "cuda" or precision != "bf16":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((f for key, f in PEAK_BF16_FLOPS if key in name), None)

    def peak_mem_mib(self):
        """The most memory this process has held: the GPU's allocations, or on a CPU its resident set."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, t):
        """Average a tensor over the processes (in place on a copy)."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world

    def wrap(self, model, fsdp):
        """The model as the step runs it: itself for one process, DistributedDataParallel, or
        with ``fsdp`` sharded in place (``fully_shard``: each block's parameters, gradients and
        AdamW moments split across the processes, gathered only while the block runs)."""
        if self.enabled and fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(model)  # the rest: embeddings (tied to the head), ln_f
            return model
        if self.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids)
        return model

    def no_sync(self, wrapped, sync, fsdp):
        """Skip the gradient all-reduce on the micro-steps before the last one of a step."""
        if not self.enabled or sync and not fsdp:
            return contextlib.nullcontext()
        if fsdp:
            wrapped.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()

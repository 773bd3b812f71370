"""python -m bench.breakdown: where a kernel's time goes, on a CUDA GPU.

For each case (an op and a pass at GPT-2 small's shapes, bf16) it measures three things:

    timed ms    triton.testing.do_bench's median, as the benchmark times it
    gpu ms      the sum of the GPU kernels' own durations in one call (torch.profiler)
    host ms     the CPU time to issue one call, without waiting for the GPU

and lists each kernel's share, and the Python functions where the host time goes (cProfile,
own time per call), so that a host-bound op shows what to cut. When the timed time is well above the GPU kernels' sum and near
the host time, the GPU is waiting for the host (launch and dispatch overhead), and no kernel
change helps; when it is near the GPU sum, the kernels themselves are the cost.

    python -m bench.breakdown [--out breakdown.json] [--only attention,layer_norm,gelu]
"""

import argparse
import cProfile
import json
import pstats
import sys
import time


def _cases(only):
    import torch
    import torch.nn.functional as F

    import gpt2_kernels

    bf16, dev = torch.bfloat16, "cuda"

    def attn_inputs():
        q, k, v = (torch.randn(16, 12, 1024, 64, device=dev, dtype=bf16, requires_grad=True) for _ in range(3))
        return (q, k, v), torch.randn(16, 12, 1024, 64, device=dev, dtype=bf16)

    def sm80(q, k, v):  # the same kernel with the sm_80 candidates only: no TMA, no Hopper tiles
        return gpt2_kernels.attention(q, k, v, family=80)

    def sdpa(q, k, v):
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def rows(n):  # (inputs, dout) of a row-wise op over 64 x 1024 rows of width n
        x = torch.randn(64 * 1024, n, device=dev, dtype=bf16, requires_grad=True)
        return (x,), torch.randn_like(x)

    cases = []
    if "attention" in only:
        for name, fn in (("triton", gpt2_kernels.attention), ("triton-sm80", sm80), ("sdpa-cudnn", sdpa)):
            cases.append(("attention", name, attn_inputs, fn))
    if "layer_norm" in only:
        w, b = torch.ones(768, device=dev, dtype=bf16), torch.zeros(768, device=dev, dtype=bf16)
        cases.append(("layer_norm", "triton", lambda: rows(768),
                      lambda x: gpt2_kernels.layer_norm(x, w, b)))
        cases.append(("layer_norm", "eager", lambda: rows(768),
                      lambda x: F.layer_norm(x, (768,), w, b)))
    if "gelu" in only:
        bias = torch.zeros(3072, device=dev, dtype=bf16, requires_grad=True)
        cases.append(("gelu", "triton", lambda: rows(3072), lambda x: gpt2_kernels.gelu(x, bias)))
        cases.append(("gelu", "eager", lambda: rows(3072),
                      lambda x: F.gelu(x + bias, approximate="tanh")))
    return cases


def measure(make, fn, passes=("fwd", "fwd+bwd")):
    import torch
    import triton.testing
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for pass_ in passes:
        inputs, dout = make()

        def call():
            if pass_ == "fwd":
                with torch.no_grad():
                    return fn(*inputs)
            for t in inputs:
                t.grad = None
            return fn(*inputs).backward(dout)

        for _ in range(3):
            call()
        torch.cuda.synchronize()
        timed = triton.testing.do_bench(call, warmup=25, rep=100)
        n = 20
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        host = (time.perf_counter() - t0) / n * 1e3  # issue time only, unless the queue fills
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                call()
            torch.cuda.synchronize()
        kernels = {}
        for e in prof.key_averages():
            us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if us:
                kernels[e.key] = us / n / 1e3
        top = dict(sorted(kernels.items(), key=lambda kv: -kv[1])[:8])
        out[pass_] = {"timed_ms": timed, "gpu_ms": sum(kernels.values()), "host_ms": host, "kernels_ms": top,
                      "host_top_us": _host_profile(call, n)}
    return out


def _host_profile(call, n, top=12):
    """{"file:line(function)": own microseconds per call} of the slowest Python functions."""
    import torch

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        call()
    prof.disable()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, primitive, own s, cumulative s, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {f"{f.rsplit('/', 2)[-1] if '/' in f else f}:{line}({name})": round(v[2] / n * 1e6, 1)
            for (f, line, name), v in rows}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the numbers as JSON here")
    p.add_argument("--only", default="attention,layer_norm,gelu", help="attention, layer_norm, gelu")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("python -m bench.breakdown: needs a CUDA GPU", file=sys.stderr)
        return 2
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": []}
    print(f"{'op':<11} {'impl':<11} {'pass':<8} {'timed ms':>9} {'gpu ms':>8} {'host ms':>8}  top kernels (ms)")
    for op, impl, make, fn in _cases(args.only.split(",")):
        try:
            m = measure(make, fn)
        except Exception as e:  # noqa: BLE001 - one case failing must not lose the others
            print(f"{op:<11} {impl:<11} error: {type(e).__name__}: {e}")
            results["cases"].append({"op": op, "impl": impl, "error": f"{type(e).__name__}: {e}"})
            continue
        for pass_, r in m.items():
            top = ", ".join(f"{k[:40]} {v:.3f}" for k, v in list(r["kernels_ms"].items())[:4])
            print(f"{op:<11} {impl:<11} {pass_:<8} {r['timed_ms']:>9.3f} {r['gpu_ms']:>8.3f} {r['host_ms']:>8.3f}  {top}")
        results["cases"].append({"op": op, "impl": impl, **m})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

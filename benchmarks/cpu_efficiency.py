"""How close each transformer backend's CPU training step comes to the machine's own matmul rate.

    OMP_NUM_THREADS=1 python benchmarks/cpu_efficiency.py                   # all four, 1 thread
    python benchmarks/cpu_efficiency.py --threads 2 --steps 5 --only river latte

For each workload, in one run: the FLOPs of one forward + backward counted by torch's FlopCounterMode
(matmuls, convolutions, attention), divided by the measured time of a whole optimiser step (loss under
fp32, backward, AdamW), is the achieved rate; it is set against a square fp32 GEMM microbenchmark
(`--gemm-size`, best of 10, measured before and after the workloads, the better of the two: this VM's clock
drifts by about 10 % over minutes) at the same thread count. Times are wall time and process CPU time (on a
shared machine the CPU time leaves out other jobs' turns; with one thread the two agree when it is quiet).
Then torch.profiler records one step and the table of its top ops by self CPU time shows where the rest
goes; "matmul share" is the self time of matmul, convolution and attention kernels over all ops.

The GEMM rate of a 1024^3 product is not what torch's kernels reach at a model's own (smaller, thinner)
shapes. So the script also records every matmul, convolution and attention call of one forward + backward
(op, shapes, strides, arguments) and replays each distinct call alone on random tensors of the same layout
(best of `--replays`, times its count): "kernels alone" is the time the step's FLOPs take with nothing
else running, and its rate against the GEMM is the ceiling at these shapes. The gap between the step and
that ceiling is the other work (element-wise ops, copies, norms, the optimiser, Python).

Workloads (configs/, batches of synthetic latents as `vpt train` sees after `vpt save-latents`):
  river   RIVER medium (inner_dim 512, depth 4, mid_depth 4: 40.6M) on BAIR64's 4 x 8 x 8 latents, batch 4
  latte   Latte-S/2 on the UCF-101 config's 16 x 4 x 32 x 32 latents, batch 1
  seer    configs/seer/tiny.yaml as it is (8 frames of 32 px, batch 8)
  pvdm    the PVDM UNet at benchmarks/pvdm.py's reduced width on the released 32x32 + 16x32 + 16x32 planes, batch 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import gemm_flops_per_s, machine  # noqa: E402
from gpu_check import Settings, Workload, build_workload, counted_flops, make_step  # noqa: E402

WORKLOADS = {
    "river": dict(config="river/bair64.yaml", model_changes=dict(size=None, inner_dim=512, depth=4, mid_depth=4), batch_size=4),
    "latte": dict(config="latte/ucf101_xl2.yaml", model_changes=dict(size="S/2"), batch_size=1),
    "seer": dict(config="seer/tiny.yaml", batch_size=None),
    "pvdm": dict(config="pvdm/ucf101.yaml", model_changes=dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1,
                                                            attention_resolutions=[2, 1]), batch_size=1),
}  # fmt: skip
#: aten ops that are the matmul / attention work the FLOP count is made of
MATMUL_OPS = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "matmul",
    "linear",
    "convolution",
    "conv",
    "scaled_dot_product",
    "_flash",
)


class KernelRecorder(TorchDispatchMode):
    """Records each matmul / convolution / attention aten call: {signature: [op, args, kwargs, count]}, with
    tensors kept as (shape, stride, dtype) so that a replay can rebuild them."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name.lstrip("_").startswith(("mm", "addmm", "bmm", "baddbmm", "convolution", "scaled_dot_product")):
            layout = tree_map(lambda a: ("T", tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a,
                              (args, kwargs))  # fmt: skip
            key = f"{func}{layout}"
            self.calls.setdefault(key, [func, *layout, 0])[3] += 1
        return func(*args, **kwargs)


def kernel_class(func) -> str:
    name = func.overloadpacket.__name__
    return "attention" if "scaled_dot_product" in name else "convolution" if "convolution" in name else "matmul"


def kernels_alone(work: Workload, settings: Settings, replays: int) -> dict[str, tuple[float, float]]:
    """{matmul | convolution | attention: (FLOPs, seconds)} of the calls of one forward + backward, each distinct
    call replayed alone (best of `replays`, times its count) and its FLOPs counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    recorder = KernelRecorder()
    with recorder:
        with settings.autocast:
            loss = work.model.loss(work.batch)["loss"]
        loss.backward()
    work.model.zero_grad(set_to_none=True)

    def is_layout(a) -> bool:
        return isinstance(a, tuple) and a[:1] == ("T",)

    def rebuild(a):
        if not is_layout(a):
            return a
        _, shape, stride, dtype = a
        storage = 1 + sum((size - 1) * step for size, step in zip(shape, stride)) if all(shape) else 0
        return torch.randn(storage, dtype=dtype).as_strided(shape, stride)

    totals: dict[str, list[float]] = {}
    for func, args, kwargs, count in recorder.calls.values():
        args, kwargs = tree_map(rebuild, (args, kwargs), is_leaf=is_layout)
        counter = FlopCounterMode(display=False)
        with counter:
            func(*args, **kwargs)  # also the warm-up
        best = float("inf")
        for _ in range(replays):
            started = time.perf_counter()
            func(*args, **kwargs)
            best = min(best, time.perf_counter() - started)
        flops_and_seconds = totals.setdefault(kernel_class(func), [0.0, 0.0])
        flops_and_seconds[0] += counter.get_total_flops() * count
        flops_and_seconds[1] += best * count
    return {name: (flops, seconds) for name, (flops, seconds) in totals.items()}


def measure(work: Workload, settings: Settings, steps: int) -> dict:
    """Counted FLOPs per step and the median wall and CPU seconds per step, after one warm-up step."""
    flops = counted_flops(work, settings)
    step = make_step(work, settings)
    step()
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"flops": flops, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "step": step}


def profile(step, top: int) -> tuple[list[tuple[str, float, int]], float, float]:
    """(top ops by self CPU time as (name, seconds, calls), share of self time in matmul/attention ops,
    total self seconds) of one call of `step`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as recorded:
        step()
    events = [e for e in recorded.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in MATMUL_OPS))
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:top]], matmul / total, total / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=5, help="timed optimiser steps per workload (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--gemm-size", type=int, default=1024, help="side of the square fp32 GEMM")
    parser.add_argument("--replays", type=int, default=3, help="timed replays of each distinct kernel call (best)")
    parser.add_argument("--top", type=int, default=8, help="ops shown per profile")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(torch.device("cpu"), dry_run=False, train_steps=args.steps, budget_s=0, total_s=0,
                        compile_backend="inductor", precision="fp32")  # fmt: skip

    def measure_gemm() -> dict[str, float]:
        return {
            name: gemm_flops_per_s(settings.device, torch.float32, size=args.gemm_size, repeats=10, clock=clock)
            for name, clock in (("wall", time.perf_counter), ("cpu", time.process_time))
        }

    gemm = measure_gemm()  # measured again at the end: the machine's limit is the better of the two
    rows, profiles = [], {}
    for name in args.only:
        spec = WORKLOADS[name]
        work = build_workload(
            name, settings, spec["batch_size"], config=spec["config"], model_changes=spec.get("model_changes")
        )
        result = measure(work, settings, args.steps)
        profiles[name] = profile(result["step"], args.top)
        result["kernels"] = kernels_alone(work, settings, args.replays)
        result["kernels_s"] = sum(seconds for _, seconds in result["kernels"].values())
        rows.append((name, work.batch_size, result))
        del work

    gemm = {name: max(rate, measure_gemm()[name]) for name, rate in gemm.items()}
    print(f"\nCPU efficiency: fp32 training step against a {args.gemm_size}^3 fp32 GEMM - {machine(settings.device)}")
    print(f"GEMM: {gemm['wall'] / 1e9:.1f} GFLOP/s wall, {gemm['cpu'] / 1e9:.1f} GFLOP/s CPU time")
    print(f"{'workload':<8} {'batch':>5} {'GFLOP/step':>11} {'s/step':>8} {'GFLOP/s':>8} {'of GEMM':>8} "
          f"{'CPU s/step':>10} {'of GEMM':>8} {'matmul share':>12} {'kernels alone s':>15} {'their rate':>10} "
          f"{'step of ceiling':>15}")  # fmt: skip
    for name, batch, r in rows:
        wall_rate, cpu_rate = r["flops"] / r["wall_s"], r["flops"] / r["cpu_s"]
        print(f"{name:<8} {batch:>5} {r['flops'] / 1e9:>11.2f} {r['wall_s']:>8.3f} {wall_rate / 1e9:>8.1f} "
              f"{100 * wall_rate / gemm['wall']:>7.1f}% {r['cpu_s']:>10.3f} {100 * cpu_rate / gemm['cpu']:>7.1f}% "
              f"{100 * profiles[name][1]:>11.1f}% {r['kernels_s']:>15.3f} "
              f"{100 * r['flops'] / r['kernels_s'] / gemm['wall']:>9.1f}% {100 * r['kernels_s'] / r['wall_s']:>14.1f}%")  # fmt: skip
    print("\nKernels alone, by class: share of the step's counted FLOPs, seconds per step, rate against the GEMM")
    for name, _, r in rows:
        parts = [f"{kind} {100 * flops / r['flops']:.0f}% {seconds:.3f} s {100 * flops / seconds / gemm['wall']:.0f}%"
                 for kind, (flops, seconds) in sorted(r["kernels"].items())]  # fmt: skip
        print(f"  {name:<8} " + "; ".join(parts))
    for name, (ops, share, total) in profiles.items():
        print(
            f"\n{name}: top ops by self CPU time (one profiled step, {total:.2f} s; matmul/conv/attention {100 * share:.1f}%)"
        )
        for key, seconds, calls in ops:
            print(f"  {key:<45} {seconds * 1e3:>9.1f} ms {calls:>6} calls")


if __name__ == "__main__":
    main()

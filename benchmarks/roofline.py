"""How close to the machine: training, the IWAE bound and the served /iwae as fractions of the
same-run GEMM rate at the same shapes.

For each workload it records every matrix product the workload dispatches (shapes, strides and
dtypes, through a `TorchDispatchMode`), counts their FLOPs (`torch.utils.flop_counter`), times the
workload as the library runs it, then replays exactly those products alone, in fp32 and in bf16,
in the same process. The fraction is

    achieved FLOP/s / GEMM-only FLOP/s = (time of the GEMMs alone) / (time of the workload),

so 100 % means the workload is nothing but its matrix products; the rest is elementwise work,
reductions, the optimizer, Python and dispatch. The workload and its replays are timed in
alternating rounds and each fraction is the median of the rounds' ratios, so a VM whose speed
drifts moves both sides together. The `--compile` rows run the workload as `vae train --compile`
does (model.core.compilation) against the products the eager workload dispatches; their first call,
which compiles, is reported apart (inductor caches it on disk for the next process). The bf16 column is the ceiling AMX (or a GPU's
tensor cores) would give the same products. A profile of the workload's top operators says where
the rest goes, and oneDNN's verbose log names the kernels the CPU ran.

    python benchmarks/roofline.py                       # embedded digits, about a minute
    python benchmarks/roofline.py --data-dir ../shared/data/mnist --json docs/results/roofline.json

Nothing here is a test: it prints ratios measured in one run, never asserts a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from model.config.train import TrainConfig
from model.core import likelihoods
from model.core.compilation import compiling
from model.core.objectives import iwae_bound
from model.core.precision import autocast
from model.core.schedules import Progress
from model.data.base import DataBundle, Split
from model.data.loading import load_data
from model.kinds.registry import build_model, build_objective
from model.training.loop import adam

aten = torch.ops.aten
# Under inference_mode a Linear reaches the dispatcher as aten.linear itself (not decomposed).
GEMMS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.linear.default}


@dataclass(frozen=True)
class Gemm:
    """One recorded matrix product: the op and its tensor arguments' (shape, stride, dtype)."""

    op: object
    args: tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype] | object, ...]

    def flops(self) -> int:
        shapes = [a[0] for a in self.args if isinstance(a, tuple)]
        if self.op is aten.linear.default:  # input (..., k), weight (n, k)
            (*rows, k), (n, _) = shapes[:2]
            return 2 * math.prod(rows) * n * k
        if self.op is aten.mm.default:
            (m, k), (_, n) = shapes
            return 2 * m * n * k
        if self.op is aten.addmm.default:
            _, (m, k), (_, n) = shapes
            return 2 * m * n * k
        *_, (b, m, k), (_, _, n) = shapes
        return 2 * b * m * n * k


class GemmRecorder(TorchDispatchMode):
    """Records the matrix products dispatched while active (nothing else changes)."""

    def __init__(self):
        super().__init__()
        self.gemms: list[Gemm] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            self.gemms.append(Gemm(func, tuple((tuple(a.shape), tuple(a.stride()), a.dtype)
                                               if isinstance(a, torch.Tensor) else a for a in args)))
        return func(*args, **(kwargs or {}))


def replay(gemms: list[Gemm], dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """A function running the recorded products alone, on fresh tensors of the same layout and `dtype`."""
    calls = []
    for gemm in gemms:
        args = []
        for a in gemm.args:
            if isinstance(a, tuple):
                shape, stride, _ = a
                t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
                t.copy_(torch.randn(shape, device=device, dtype=torch.float32).to(dtype))
                args.append(t)
            else:
                args.append(a)
        calls.append((gemm.op, args))

    def run():
        for op, args in calls:
            op(*args)
    return run


def interleaved(fns: list[Callable[[], object]], *, min_seconds: float, device: torch.device,
                warmup: int = 3, min_rounds: int = 5) -> tuple[list[float], list[list[float]]]:
    """Time the functions in alternating rounds (one call of each per round) until each has run for
    at least `min_seconds` and `min_rounds` rounds are done: (median seconds per call of each, every
    round's times).

    Interleaving puts a workload and its baseline under the same conditions: on a shared VM whose
    speed drifts by tens of percent, timing one then the other would move their ratio with it.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rounds: list[list[float]] = []
    totals = [0.0] * len(fns)
    while min(totals) < min_seconds or len(rounds) < min_rounds:
        times = []
        for i, fn in enumerate(fns):
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - started)
            totals[i] += times[-1]
        rounds.append(times)
    medians = [sorted(r[i] for r in rounds)[len(rounds) // 2] for i in range(len(fns))]
    return medians, rounds


def median_ratio(rounds: list[list[float]], numerator: int, denominator: int) -> float:
    """The median over rounds of one function's time over another's, measured side by side."""
    ratios = sorted(r[numerator] / r[denominator] for r in rounds)
    return ratios[len(ratios) // 2]


def profile_top(fn: Callable[[], object], n: int = 8) -> list[dict]:
    """The n operators with the most self CPU time over a few calls of fn (in this thread)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count // 5}
            for e in events[:n]]


def measure(name: str, fn: Callable[[], object], device: torch.device, min_seconds: float,
            items: int, unit: str, same_products: Callable[[], object] | None = None,
            in_process: Callable[[], object] | None = None) -> dict:
    """Time fn, record and count its GEMMs, replay them in fp32 and bf16; the row of the table.

    The workload and the two replays are timed in alternating rounds (`interleaved`), and each
    fraction is the median of the rounds' own ratios.

    Args:
        same_products: a function dispatching the same matrix products as fn, eagerly, in this thread,
            to record and count: for a workload that runs them elsewhere (the service's inference
            thread) or through compiled code; default fn itself.
        in_process: the same computation without the service around it, timed beside a served workload.
    """
    started = time.perf_counter()
    fn()  # warm: allocator, oneDNN primitive caches; a compiled workload compiles here
    first_call = time.perf_counter() - started
    products = same_products or fn
    recorder = GemmRecorder()
    with recorder:
        products()
    counter = FlopCounterMode(display=False)
    with counter:
        products()
    flops = counter.get_total_flops()
    recorded = sum(g.flops() for g in recorder.gemms)
    timed = [fn, replay(recorder.gemms, torch.float32, device), replay(recorder.gemms, torch.bfloat16, device)]
    if in_process is not None:
        timed.append(in_process)
    (workload, fp32, bf16, *rest), rounds = interleaved(timed, min_seconds=min_seconds, device=device)
    dtypes = [a[2] for g in recorder.gemms for a in g.args[:2] if isinstance(a, tuple)]
    own = "bf16" if dtypes and dtypes.count(torch.bfloat16) * 2 > len(dtypes) else "fp32"
    return {
        "workload": name, "items_per_call": items, "unit": unit, "gemms_per_call": len(recorder.gemms),
        "gemm_dtype": own, "gflop_per_call": flops / 1e9, "gflop_recorded": recorded / 1e9,
        "seconds_per_call": workload, "items_per_second": items / workload, "first_call_seconds": first_call,
        "achieved_gflops": flops / workload / 1e9,
        "fp32_gemm_gflops": recorded / fp32 / 1e9, "bf16_gemm_gflops": recorded / bf16 / 1e9,
        "fraction_of_fp32_gemm": median_ratio(rounds, 1, 0), "bf16_over_fp32_gemm": median_ratio(rounds, 1, 2),
        # The fraction against the GEMMs in the workload's own dtype: the roofline it can reach.
        "fraction_of_own_gemm": median_ratio(rounds, 2 if own == "bf16" else 1, 0),
        "rounds": len(rounds),
        "top_ops": profile_top(fn),
        **({"in_process_seconds_per_call": rest[0]} if in_process is not None else {}),
    }


def training_step(config: TrainConfig, x: torch.Tensor, fused: bool = True) -> Callable[[], None]:
    """One optimiser step of the library's training loop body (model.training.loop.fit_epoch) on batch x:
    the loop's optimiser (`model.training.loop.adam`, fused), or for-each Adam (the loop's before);
    under `config.compile` the objective is compiled as `vae train --compile` compiles it (build_objective)."""
    torch.manual_seed(config.seed)
    model = build_model(config).to(x.device).train()
    objective = build_objective(config)
    optimizer = adam(model, config.optim.lr) if fused else torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    state = {"step": 0}

    def step():
        with autocast(config.precision, x.device):
            loss, _ = objective(model, x, y, Progress(epoch=0.0, step=state["step"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
    return step


def served_iwae(config: TrainConfig, data: DataBundle, batch: int, k: int, tmp: Path) -> tuple[Callable, Callable]:
    """A POST /models/roofline/iwae of `batch` images through the app in process (fastapi's TestClient),
    and the in-process bound the service computes for it (the same products, in this thread)."""
    from fastapi.testclient import TestClient

    from model.runs.checkpoint import load_checkpoint
    from model.runs.train import train
    from service.app import create_app
    from service.settings import Settings

    small = DataBundle(Split(data.train.x[:512], data.train.y[:512]), Split(data.validation.x[:64], data.validation.y[:64]),
                       Split(data.test.x[:128], data.test.y[:128]), data.binarize)
    run = train(config.replace(epochs=1, eval_k=2, calibration_k=2), tmp / "models" / "roofline", progress=False,
                data=small)
    images = data.test.x[:batch]
    body = {"images": (images.float() / 255 if images.dtype == torch.uint8 else images).tolist(), "k": k, "seed": 0}
    settings = Settings(model_dir=run.parent, max_k=max(k, 5000), max_images=max(batch, 1024), ui=False)
    client = TestClient(create_app(settings))
    client.__enter__()
    served = load_checkpoint(run).model.eval()

    def same_products():
        with torch.inference_mode():
            iwae_bound(served, images, k, chunk_size=settings.iwae_chunk)

    def call():
        response = client.post("/models/roofline/iwae", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"/iwae answered {response.status_code}: {response.text[:300]}")
    call.client = client  # closed by the caller
    return call, same_products


def onednn_kernels() -> dict:
    """The kernels oneDNN picks for an fp32 and a bf16 matmul on this CPU (from ONEDNN_VERBOSE)."""
    code = ("import torch\n"
            "a = torch.randn(256, 784); b = torch.randn(784, 256)\n"
            "torch.nn.functional.linear(a, b.t())\n"
            "torch.nn.functional.linear(a.bfloat16(), b.t().bfloat16())\n")
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    kernels = {}
    for line in out.splitlines():
        if line.startswith("onednn_verbose") and ",exec," in line and "matmul" in line:
            fields = line.split(",")
            impl = next((f for f in fields if f.startswith(("brg", "gemm", "jit", "ref"))), fields[5])
            dtype = "bf16" if "bf16" in line else "fp32"
            kernels.setdefault(dtype, impl)
    return kernels or {"note": "oneDNN ran no matmul (fp32 matmuls go to MKL/OpenBLAS sgemm on this build)"}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "blas": next((line.strip() for line in torch.__config__.show().splitlines() if "BLAS_INFO" in line), "")}


def render(result: dict) -> str:
    lines = [f"machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, torch "
             f"{result['machine']['torch']}, CPU capability {result['machine']['capability']}; "
             f"{result['device']}",
             f"kernels (oneDNN verbose): {result['kernels']}", "",
             "| workload | items/s | achieved GFLOP/s | fp32 GEMM, same shapes | fraction of fp32 GEMM | "
             "bf16 GEMM (× fp32) | fraction of its own dtype's GEMM |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['workload']} | {row['items_per_second']:,.0f} {row['unit']}/s | "
                     f"{row['achieved_gflops']:.1f} | {row['fp32_gemm_gflops']:.1f} | "
                     f"{100 * row['fraction_of_fp32_gemm']:.0f} % | {row['bf16_gemm_gflops']:.1f} "
                     f"({row['bf16_over_fp32_gemm']:.2f}×) | {100 * row['fraction_of_own_gemm']:.0f} % "
                     f"({row['gemm_dtype']}) |")
    lines.append("")
    for row in result["rows"]:
        tops = ", ".join(f"{t['op']} {100 * t['share']:.0f} %" for t in row["top_ops"][:6])
        line = f"- {row['workload']}: {row['gemms_per_call']} GEMMs, {1e3 * row['gflop_per_call']:.1f} MFLOP per call"
        if "--compile" in row["workload"]:
            line += (f"; its first call, which compiles (or reads inductor's cache), took {row['first_call_seconds']:.1f} s, "
                     f"{row['first_call_seconds'] / row['seconds_per_call']:,.0f} calls' time")
        if "in_process_seconds_per_call" in row:
            line += (f"; the same bound in process takes {1e3 * row['in_process_seconds_per_call']:.1f} ms of the "
                     f"request's {1e3 * row['seconds_per_call']:.1f} ms")
        lines.append(line + (f"; self time: {tops}" if tops else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: the embedded digits)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch (the issue's 128)")
    parser.add_argument("--train-latent", type=int, default=2, help="latent units of the trained network "
                        "(the course's default 2)")
    parser.add_argument("--iwae-latent", type=int, default=16)
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the IWAE bound")
    parser.add_argument("--iwae-batch", type=int, default=100, help="images per IWAE call (vae evaluate's batch)")
    parser.add_argument("--serve-batch", type=int, default=32, help="images per served /iwae request")
    parser.add_argument("--serve-k", type=int, default=100, help="K of the served /iwae (its default)")
    parser.add_argument("--seconds", type=float, default=2.0, help="least time spent timing each measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-serve", action="store_true", help="leave out the served /iwae")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()

    dataset = "mnist" if args.data_dir else "embedded"
    base = TrainConfig.of(dataset=dataset, data_dir=args.data_dir, device=args.device, batch_size=args.batch_size)
    data = load_data(base)
    with_shape = dict(input_shape=tuple(data.train.x.shape[1:]), class_labels=tuple(range(10)))
    rows = []

    train_config = base.replace(latent_features=args.train_latent, **with_shape)
    x = data.train.x[:args.batch_size].to(device)
    what = f"course MLP, latent {args.train_latent}, batch {args.batch_size}"
    rows.append(measure(f"training step, {what}, for-each Adam (before)", training_step(train_config, x, fused=False),
                        device, args.seconds, args.batch_size, "images"))
    rows.append(measure(f"training step, {what}", training_step(train_config, x), device, args.seconds,
                        args.batch_size, "images"))
    rows.append(measure(f"training step, {what}, bf16-mixed", training_step(train_config.replace(precision="bf16-mixed"), x),
                        device, args.seconds, args.batch_size, "images"))
    rows.append(measure(f"training step, {what}, --compile", training_step(train_config.replace(compile=True), x),
                        device, args.seconds, args.batch_size, "images", same_products=training_step(train_config, x)))
    mixed = train_config.replace(precision="bf16-mixed")
    rows.append(measure(f"training step, {what}, bf16-mixed --compile", training_step(mixed.replace(compile=True), x),
                        device, args.seconds, args.batch_size, "images", same_products=training_step(mixed, x)))

    iwae_config = base.replace(latent_features=args.iwae_latent, **with_shape)
    torch.manual_seed(0)
    model = build_model(iwae_config).to(device).eval()
    xi = data.test.x[:args.iwae_batch].to(device)

    def bound(precision: str = "fp32", compiled: bool = False):
        def run():
            with torch.inference_mode(), autocast(precision, device), compiling(compiled):
                iwae_bound(model, xi, args.k)
        return run

    what = f"K = {args.k}, latent {args.iwae_latent}, {args.iwae_batch} images"
    soft = likelihoods.bernoulli
    likelihoods.bernoulli = lambda logits: likelihoods.Bernoulli(logits=logits, validate_args=False)
    try:  # the bound as it was: torch's Bernoulli.log_prob (BCE with logits) summed over the pixels
        rows.append(measure(f"IWAE bound, {what}, Bernoulli.log_prob (before)", bound(), device, args.seconds,
                            args.iwae_batch, "images"))
    finally:
        likelihoods.bernoulli = soft
    rows.append(measure(f"IWAE bound, {what}", bound(), device, args.seconds, args.iwae_batch, "images"))
    rows.append(measure(f"IWAE bound, {what}, bf16-mixed", bound("bf16-mixed"), device, args.seconds,
                        args.iwae_batch, "images"))
    rows.append(measure(f"IWAE bound, {what}, --compile", bound(compiled=True), device, args.seconds,
                        args.iwae_batch, "images", same_products=bound()))
    rows.append(measure(f"IWAE bound, {what}, bf16-mixed --compile", bound("bf16-mixed", compiled=True), device,
                        args.seconds, args.iwae_batch, "images", same_products=bound("bf16-mixed")))

    if not args.skip_serve:
        with tempfile.TemporaryDirectory() as tmp:
            call, same_products = served_iwae(iwae_config, data, args.serve_batch, args.serve_k, Path(tmp))
            try:
                rows.append(measure(f"served POST /iwae, K = {args.serve_k}, {args.serve_batch} images (JSON)",
                                    call, device, args.seconds, args.serve_batch, "images",
                                    same_products=same_products, in_process=same_products))
            finally:
                call.client.__exit__(None, None, None)

    result = {"machine": machine(), "device": str(device), "kernels": onednn_kernels(), "rows": rows,
              "seconds": round(time.perf_counter() - started, 1),
              "command": "python benchmarks/roofline.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(render(result))
    print(f"\n({result['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Part d: where the step's time goes. ``train.loop.train_step`` on a resident batch under
``torch.profiler``: the top operations, kernel time by kernel family, the step's phases as the
trainer's own ``step.<phase>`` ranges (``train.loop.STEP_PHASES``) and the GPU's idle share."""

from __future__ import annotations

import bisect
import gc
import math
import time
from typing import Any

import torch
from torch.autograd import DeviceType

from bench.gpu.common import N_CLASSES, Clock, Report, Sizes, attempt, fmt, free, one_line, say, step_config, stepper, sync
from soundception.shared.config import FeaturizerConfig
from soundception.train.loop import STEP_PHASES

PREFIX = "step."
PHASE_NOTES = {
    "data_wait": "`next(batches)`: here a resident batch, so about nothing",
    "augmentation": "`prepare_batch`: the uint8 batch to the device, `augment_batch`, `model.normalize`",
    "forward": "`runner(images)` (main and auxiliary heads)",
    "loss": "`soundception_loss` (with its two `float()` reads of the parts)",
    "backward": "`loss.backward()` and the `float(loss)` read after it",
    "optimizer_step": "`clip_grad_norm_` and `optimizer.step()` (AdamW)",
}


def profile_step(sizes: Sizes, device: torch.device, batch: int) -> dict[str, Any]:
    """Warm-up steps, ``profile_steps`` steps timed by the wall clock, then as many under ``torch.profiler``;
    returns the raw material of part d (the profiler's events, not a table)."""
    from torch.profiler import ProfilerActivity, profile

    steps = stepper(step_config(sizes, device, batch=batch, train_backbone=True), device, batch)
    steps(sizes.step_warmup)

    def timed() -> float:
        sync(device)
        started = time.perf_counter()
        steps(sizes.profile_steps)
        sync(device)
        return time.perf_counter() - started

    result: dict[str, Any] = {"batch": batch, "step_s": timed() / sizes.profile_steps}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        result["profiled_s"] = timed()
    started = time.perf_counter()
    result["events"], result["averages"] = prof.events(), prof.key_averages()
    result["parse_s"] = time.perf_counter() - started
    return result


def device_time(item: Any) -> float:
    """Microseconds of self device time of a profiler event or average (names changed across torch versions)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(item, name, None)
        if value is not None:
            return float(value)
    return 0.0


def device_events(events: list[Any]) -> list[Any]:
    """The kernels, memcpys and memsets on the GPU, without ``record_function`` ranges mirrored on the GPU
    (flagged ``is_user_annotation``, or, in a torch without that flag, named like a host event)."""
    host_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    return [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            and e.name not in host_names and not e.name.startswith(PREFIX)]


def per_step(count: int, steps: int) -> str:
    return str(count // steps) if count % steps == 0 else f"{count / steps:.1f}"


def kernel_family(name: str) -> str:
    """A coarse family from a kernel's name (first match wins)."""
    lower = name.lower()
    for family, keys in (("memcpy / memset", ("memcpy", "memset")),
                         ("layout conversion (NCHW <-> NHWC, transpose)", ("nchwtonhwc", "nhwctonchw", "transpose")),
                         ("convolution (cuDNN / implicit GEMM)", ("conv", "fprop", "dgrad", "wgrad", "implicit",
                                                                  "xmma", "cudnn")),
                         ("matrix product (GEMM)", ("gemm", "cublas", "cutlass", "matmul")),
                         ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
                         ("multi-tensor (optimizer, grad norm)", ("multi_tensor", "foreach")),
                         ("reduction", ("reduce",)),
                         ("pooling", ("pool",)),
                         ("elementwise", ("elementwise", "vectorized", "unrolled"))):
        if any(key in lower for key in keys):
            return family
    return "other"


def short(name: str, width: int = 70) -> str:
    name = " ".join(name.split()).replace("|", "/")
    return name if len(name) <= width else name[:width - 3] + "..."


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def part_d(report: Report, sizes: Sizes, device: torch.device, clock: Clock) -> dict[str, Any]:
    """Profile of ``train_step``: top ops, kernel families, phases, GPU idle. Every failure is a report line."""
    cuda = device.type == "cuda"
    batch, steps = sizes.profile_batch, sizes.profile_steps
    report.add("", "## d. Where the step's time goes", "")
    report.add(f"`train.loop.train_step`, stage 2, batch {batch}, the setup of part a "
               f"(`Soundception('{sizes.backbone}', {N_CLASSES} classes)`, {FeaturizerConfig().image_height} x "
               f"{sizes.crop_px} px, {'bf16 autocast + channels_last' if cuda else 'fp32'}, AdamW, resident "
               f"batch): {sizes.step_warmup} warm-up steps, {steps} steps timed, then {steps} steps under "
               f"`torch.profiler` (activities CPU{' + CUDA' if cuda else ''}).")
    if clock.left() < (10 if sizes.tiny else 40):
        report.add("", f"Skipped: {max(clock.left(), 0):.0f} s left of the budget.")
        return {}
    started = time.perf_counter()
    r = attempt(profile_step, sizes, device, batch)
    say(f"  [{time.perf_counter() - started:.0f} s] profiled {steps} steps"
        + (f" (profiler post-processing {r['parse_s']:.0f} s)" if "parse_s" in r else ""))
    if "error" in r:
        free(device)
        report.add("", f"Failed: {r['error']}")
        return {}
    report.add("", f"Unprofiled: {fmt(r['step_s'], 3)} s/step ({fmt(batch / r['step_s'])} samples/s); under the "
                   f"profiler: {fmt(r['profiled_s'] / steps, 3)} s/step.")
    kernels: dict[str, Any] = {}
    for name, function in (("top operations", top_operations), ("kernel families", families),
                           ("phases", phases), ("GPU idle", idle)):
        try:
            function(report, r, cuda, steps, kernels)
        except Exception as error:
            import traceback

            traceback.print_exc()
            report.add("", f"{name}: failed ({one_line(error)[:200]}).")
    summary = {"step_s": r["step_s"], "batch": batch}
    r.clear()
    gc.collect()
    free(device)
    return summary


def top_operations(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(i) The top 15 operations by self device time (self CPU time on the CPU), with their longest kernel."""
    events = r["events"]
    on_device = device_events(events) if cuda else []
    total = sum(e.time_range.elapsed_us() for e in on_device)
    kernels.update(events=on_device, total_us=total)
    ops = [a for a in r["averages"] if a.device_type == DeviceType.CPU and not a.key.startswith(PREFIX)]
    if not cuda:
        ops.sort(key=lambda a: a.self_cpu_time_total, reverse=True)
        total_cpu = sum(a.self_cpu_time_total for a in ops)
        rows = [[f"`{short(a.key, 50)}`", per_step(a.count, steps), fmt(a.self_cpu_time_total / 1e3 / steps, 2),
                 f"{100 * a.self_cpu_time_total / total_cpu:.1f} %" if total_cpu else "n/a"] for a in ops[:15]]
        report.add("", "(i) Top 15 operations by self CPU time (`key_averages()`; CPU activity only on the CPU).")
        report.table(["operation", "calls/step", "CPU ms/step", "share of CPU time"], rows)
        return
    main_kernel: dict[str, dict[str, float]] = {}
    for event in events:
        if event.device_type == DeviceType.CPU:
            for kernel in getattr(event, "kernels", []):
                by_name = main_kernel.setdefault(event.name, {})
                by_name[kernel.name] = by_name.get(kernel.name, 0.0) + kernel.duration
    ops = sorted((a for a in ops if device_time(a) > 0), key=device_time, reverse=True)
    rows = []
    for a in ops[:15]:
        by_name = main_kernel.get(a.key, {})
        top = max(by_name, key=by_name.get) if by_name else ""
        rows.append([f"`{short(a.key, 50)}`", per_step(a.count, steps), fmt(device_time(a) / 1e3 / steps, 2),
                     f"{100 * device_time(a) / total:.1f} %" if total else "n/a",
                     f"`{short(top, 60)}`" + (f" ({100 * by_name[top] / sum(by_name.values()):.0f} %)" if top else "")])
    covered = sum(device_time(a) for a in ops[:15])
    report.add("", f"(i) Top 15 operations by self CUDA time (`key_averages()` grouped by operation name, so the "
                   f"shares add up without double counting). Total kernel time (kernels + copies + memsets on the "
                   f"GPU): {fmt(total / 1e3 / steps, 1)} ms/step; these 15: {100 * covered / total:.1f} %."
               if total else "(i) No CUDA kernels recorded.")
    report.table(["operation", "calls/step", "CUDA ms/step", "share of CUDA time",
                  "its longest kernel (share of the operation)"], rows, "|---|---:|---:|---:|---|")


def families(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """Kernel time by kernel family (from the kernels' names)."""
    if not cuda or not kernels.get("total_us"):
        return
    found: dict[str, list[float]] = {}
    for event in kernels["events"]:
        entry = found.setdefault(kernel_family(event.name), [0.0, 0])
        entry[0] += event.time_range.elapsed_us()
        entry[1] += 1
    total = kernels["total_us"]
    rows = [[family, per_step(n, steps), fmt(us / 1e3 / steps, 2), f"{100 * us / total:.1f} %"]
            for family, (us, n) in sorted(found.items(), key=lambda kv: -kv[1][0])]
    report.add("The same kernel time by kernel family (a coarse grouping of the kernels' names):")
    report.table(["kernel family", "kernels/step", "CUDA ms/step", "share"], rows)


def phase_kernels(events: list[Any]) -> dict[str, float]:
    """Kernel seconds by the ``step.<phase>`` range open on the host when the kernel's operation started
    (backward kernels are launched by autograd's thread while the main thread waits inside ``backward``)."""
    ranges = sorted((e.time_range.start, e.time_range.end, e.name[len(PREFIX):]) for e in events
                    if e.device_type == DeviceType.CPU and e.name.startswith(PREFIX))
    starts = [a for a, _, _ in ranges]
    busy: dict[str, float] = {}
    for event in events:
        if event.device_type != DeviceType.CPU or event.name.startswith(PREFIX):
            continue
        for kernel in getattr(event, "kernels", []):
            i = bisect.bisect_right(starts, event.time_range.start) - 1
            phase = ranges[i][2] if i >= 0 and event.time_range.start <= ranges[i][1] else "outside the phases"
            busy[phase] = busy.get(phase, 0.0) + kernel.duration / 1e6
    return busy


def phases(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(ii) The trainer's phase ranges: host time per phase and, on CUDA, kernel time by launching phase."""
    host: dict[str, float] = {}
    for event in r["events"]:
        if event.device_type == DeviceType.CPU and event.name.startswith(PREFIX):
            name = event.name[len(PREFIX):]
            host[name] = host.get(name, 0.0) + event.time_range.elapsed_us() / 1e6
    missing = [p for p in STEP_PHASES if p not in host]
    if missing:
        report.add("", f"(ii) Phases: the profile holds no `{PREFIX}` range for {', '.join(missing)}.")
    busy = phase_kernels(r["events"]) if cuda and kernels.get("total_us") else {}
    kernel_total = sum(busy.values())
    marked = sum(host.values())
    rows = []
    for name in [p for p in STEP_PHASES if p in host] + [p for p in busy if p not in STEP_PHASES]:
        span = host.get(name)
        cells = [name, fmt(span * 1e3 / steps, 2) if span is not None else "n/a",
                 f"{100 * span / marked:.1f} %" if span is not None and marked else "n/a"]
        if cuda:
            k = busy.get(name, 0.0)
            cells += [fmt(k * 1e3 / steps, 2), f"{100 * k / kernel_total:.1f} %" if kernel_total else "n/a"]
        rows.append(cells + [PHASE_NOTES.get(name, "kernels launched outside the trainer's ranges")])
    report.add("", f"(ii) Phases of the step: the trainer's own `record_function` ranges (`{PREFIX}<phase>`, "
                   f"`train.loop.STEP_PHASES`), read from the {steps} profiled steps. `host ms/step` is the range's "
                   f"wall time on the host; the ranges add up to {fmt(marked * 1e3 / steps, 1)} of "
                   f"{fmt(r['profiled_s'] * 1e3 / steps, 1)} ms/step."
               + (" On the GPU the host only queues most work, so a phase's host time is not its GPU time: the "
                  "backward range ends on a read of the loss and so absorbs what was still queued. `kernel ms/step` "
                  "is the kernel time attributed to the range open on the host when the kernel's operation was "
                  "launched." if cuda else ""))
    header = ["phase", "host ms/step", "share of ranges"] + (["kernel ms/step", "share of kernel time"] if cuda
                                                             else []) + ["what it covers"]
    report.table(header, rows, "|---|" + "---:|" * (len(header) - 2) + "---|")


def idle(report: Report, r: dict[str, Any], cuda: bool, steps: int, kernels: dict[str, Any]) -> None:
    """(iii) GPU idle share: kernel time against wall time."""
    events = kernels.get("events") or []
    if not cuda or not events:
        report.add("(iii) GPU idle: " + ("not applicable on the CPU." if not cuda else "no kernels recorded."))
        return
    busy_us = union_us([(e.time_range.start, e.time_range.end) for e in events])
    kernel_s = kernels["total_us"] / 1e6 / steps
    profiled = r["profiled_s"] / steps
    report.add(f"(iii) GPU idle within the step. Under the profiler the GPU was busy (union of kernel, copy and "
               f"memset intervals) {fmt(busy_us / 1e3 / steps, 1)} ms of {fmt(profiled * 1e3, 1)} ms/step of wall "
               f"time: idle {100 * (1 - busy_us / 1e6 / steps / profiled):.1f} % (the profiler's own host overhead "
               f"included). Against the unprofiled step ({fmt(r['step_s'] * 1e3, 1)} ms), "
               f"{fmt(kernel_s * 1e3, 1)} ms of kernel time per step leaves the GPU idle "
               f"{100 * (1 - kernel_s / r['step_s']):.1f} % of the time.")

"""``python -m bench.gpu``: parse the options, run the parts asked for, write the report (see ``bench/gpu``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch

from bench.gpu.breakdown import part_d
from bench.gpu.common import FULL, TINY, Clock, Report, device_peak, free, machine_lines, make_store, one_line
from bench.gpu.ddp import loop_child, part_c
from bench.gpu.loader import part_b
from bench.gpu.step import part_a, part_compile, time_step
from soundception.train import runtime as rt

PARTS = "abcd"


def child(spec: dict[str, Any]) -> None:
    """A child process: one compiled-step measurement or one loop launch of part c; writes its JSON result."""
    sizes = TINY if spec["tiny"] else FULL
    if "loop_timed" in spec:
        sizes = replace(sizes, loop_timed=spec["loop_timed"])
    device = rt.resolve_device(spec["device"], int(os.environ.get("LOCAL_RANK", "0")))
    if spec["kind"] == "compile":
        result = time_step(sizes, device, batch=spec["batch"], compile_model=True, warmup=3, timed=6)
    else:
        result = loop_child(spec, sizes, device)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["result"]).write_text(json.dumps(result))


def run_part(report: Report, times: dict[str, float], name: str, device: torch.device, function: Any,
             *args: Any, **kwargs: Any) -> Any:
    """``function(...)`` timed; a failure is one report line, not the end of the run."""
    started = time.perf_counter()
    try:
        return function(*args, **kwargs)
    except Exception as error:
        import traceback

        traceback.print_exc()
        report.add("", f"Part {name} failed: {one_line(error)[:200]}")
        return None
    finally:
        free(device)
        times[name] = time.perf_counter() - started
        report.write()


@click.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the markdown here.")
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cpu.")
@click.option("--tiny", is_flag=True, help="Tiny sizes (small backbone, 299 x 300 crops, 2 steps): a CPU check.")
@click.option("--parts", default="a,b,c", show_default=True,
              help="Which parts to run, of a,b,c,d (d, the profile, runs right after a).")
@click.option("--workers", "workers_list", default=None,
              help="Loader worker counts of part b, comma-separated (default 0,4,8,12; tiny 0,2).")
@click.option("--loop-timed", type=int, default=None,
              help="Timed steps of each train-loop run in parts b and c (default 30; tiny 2).")
@click.option("--compile/--no-compile", "compile_model", default=False, show_default=True,
              help="Add a torch.compile row (child process, run last, killed at the budget).")
@click.option("--compile-limit", default=240.0, show_default=True, help="Seconds the compile child may take.")
@click.option("--budget-s", default=420.0, show_default=True, help="Stop starting new measurements after this.")
@click.option("--peak-tflops", type=float, default=None, help="Device peak for MFU (default: from the device name).")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep the store and runs here.")
@click.option("--child", "child_spec", default=None, hidden=True)
def main(out_path: str | None, device: str, tiny: bool, parts: str, workers_list: str | None,
         loop_timed: int | None, compile_model: bool, compile_limit: float, budget_s: float,
         peak_tflops: float | None, keep: str | None, child_spec: str | None) -> None:
    if child_spec:
        child(json.loads(child_spec))
        return
    import faulthandler

    clock = Clock(budget_s)
    # a hang (a loader deadlock, say) must not eat the device time: dump every thread's stack and exit
    faulthandler.dump_traceback_later(budget_s + 75, exit=True)
    wanted = {p.strip() for p in parts.split(",") if p.strip()}
    if not wanted or wanted - set(PARTS):
        raise click.BadParameter(f"not parts of {','.join(PARTS)}: {parts!r}", param_hint="--parts")
    sizes = TINY if tiny else FULL
    if workers_list:
        counts = tuple(int(w) for w in workers_list.split(",") if w.strip())
        if not counts or min(counts) < 0:
            raise click.BadParameter(f"not a list of worker counts: {workers_list!r}", param_hint="--workers")
        sizes = replace(sizes, workers=counts)
    if loop_timed is not None:
        if loop_timed < 1:
            raise click.BadParameter("must be at least 1", param_hint="--loop-timed")
        sizes = replace(sizes, loop_timed=loop_timed)
    chosen = rt.resolve_device(device)
    peak, peak_source = device_peak(chosen, peak_tflops)
    report = Report(Path(out_path) if out_path else None)
    report.add(f"# Soundception GPU benchmark{' (tiny sizes)' if tiny else ''}", "",
               *machine_lines(chosen, peak, peak_source))
    report.write()
    rates: dict[int, float] = {}
    flops: dict[bool, float] = {}
    times: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-bench-")))
        tmp.mkdir(parents=True, exist_ok=True)
        if "a" in wanted:
            rates, flops = run_part(report, times, "a", chosen, part_a, report, sizes, chosen, clock,
                                    peak=peak) or ({}, {})
        if "d" in wanted:  # short: before the loader parts, so that a tight budget still gets it
            profiled = run_part(report, times, "d", chosen, part_d, report, sizes, chosen, clock) or {}
            if profiled and profiled["batch"] not in rates:  # part b's `vs resident` without part a
                rates[profiled["batch"]] = profiled["batch"] / profiled["step_s"]
        loops: dict[int, dict[str, Any]] = {}
        store_url, batch = None, sizes.loop_batch
        if "b" in wanted:
            store_url, batch, loops = run_part(report, times, "b", chosen, part_b, report, sizes, chosen, clock,
                                               tmp, rates, workers_given=bool(workers_list)) or (None, batch, {})
        if "c" in wanted:
            store_url = store_url or make_store(report, sizes, tmp)
            reference = loops.get(min(sizes.ddp_workers, os.cpu_count() or 1))
            run_part(report, times, "c", chosen, part_c, report, sizes, chosen, clock, tmp, store_url, batch,
                     reference if reference and "samples_s" in reference else None)
        if compile_model:
            run_part(report, times, "compile", chosen, part_compile, report, sizes, chosen, clock,
                     limit=compile_limit, flops=flops.get(True), peak=peak)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report.add("", "Time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
               + f"; total {clock.elapsed():.0f} s.")
    report.write()


if __name__ == "__main__":
    main()

"""Benchmark of training on one CUDA device (or, with ``--tiny --device cpu``, a quick check on a CPU).

    python -m bench.gpu --out gpu.md [--compile] [--budget-s 420]
    python -m bench.gpu --out gpu.md --parts b,d --workers 1,2 --budget-s 150    # a short second run
    .venv/bin/python -m bench.gpu --tiny --device cpu --out /tmp/gpu.md            # the whole path on a CPU

Run from the repository root. Parts, each printed as it finishes and written to ``--out`` (markdown):

a. ``step.py``: ``train.loop.train_step`` with the batch resident in host memory: samples/s, peak memory,
   MFU, stage 1 and 2, cuDNN autotuning; with ``--compile``, a ``torch.compile`` row (last, in a child).
b. ``loader.py``: the training loader alone, then ``train.loop.train`` with 0, 4, 8, 12 workers; the data
   wait is the trainer's own ``data_time`` from the run's ``metrics.jsonl``.
c. ``ddp.py``: the loop under plain ``python``, ``torchrun`` with one process and with one per GPU.
d. ``breakdown.py``: ``train_step`` under ``torch.profiler``: top operations, kernel families, the
   trainer's ``step.<phase>`` ranges, GPU idle.

``common.py`` holds what they share. Nothing patches the trainer: the bench calls its functions and
reads what it logs and the ranges it marks.
"""

"""scar-net benchmark suite: ``make bench`` (``python -m benchmarks.run``) and ``make bench-quick``.

One run measures the SAME model on every backend/precision available here, each in a fresh
subprocess (:mod:`benchmarks.worker`), so peak RSS is per backend: per-slice latency at batch 1
and 8, throughput, per-volume end-to-end time split into load / preprocess / inference /
post-process / write, accuracy on the val split (the runtime's own ``evaluate_case`` and
``summarize``) and a roofline against a matrix-multiply peak measured in the same run.
Results go to ``benchmarks/results/`` (JSON, Markdown, PNG plots). See docs/performance.md.
"""

"""A run over many cases (a folder, or a manifest of paths), on this machine or on a Ray cluster.

``case.py`` does one case (the ONE copy of the per-case work: the local loop and the Ray actors
both call it), ``resume.py`` tells a finished case from one to compute, ``table.py`` writes the
results table (a row per input) and ``manifest.py`` reads a list of inputs.
"""

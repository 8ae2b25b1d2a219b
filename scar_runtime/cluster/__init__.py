"""``scar infer --ray ADDRESS``: a folder run on a Ray cluster (``ray_run.py``).

Ray is optional (``pip install 'scar-net[cluster]'``) and imported only inside the functions that
run on it: the lean runtime never imports it.
"""

RAY_EXTRA = "cluster"

"""scar-net lean runtime: NIfTI I/O, preprocessing, labels, metrics, backends and the ``scar`` CLI.

This package never imports torch, scar_train or scar_export: ``pip install scar-net`` is all a
deployment needs.
"""

__version__ = "0.1.0"


def __getattr__(name):  # `from scar_runtime import Segmenter` without slowing `import`
    if name == "Segmenter":
        from scar_runtime.pipeline.segmenter import Segmenter

        return Segmenter
    raise AttributeError(name)

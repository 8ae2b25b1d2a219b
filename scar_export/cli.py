"""``scar export``: loaded by the ``scar`` CLI only when invoked (it needs torch and onnx)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `scar train` (last.pt, "
                                      "best.pt)."),
    out: Path = typer.Option(..., "-o", "--out", help="ONNX model to write (MODEL.onnx); "
                             "MODEL.parity.json is written beside it."),
    custom_ops: bool = typer.Option(False, "--custom-ops", help="Attention cores and the "
                                    "dynamic conv as scar:: nodes (TensorRT plugins; ONNX "
                                    "Runtime runs their built-in plain-op bodies)."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights and compute with FP32 "
                              "islands; inputs/outputs stay float32."),
    engine: bool = typer.Option(False, "--engine", help="Also build a TensorRT engine "
                                "(MODEL.engine + MODEL.engine.json); needs TensorRT and a GPU."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18..22)."),
    force: bool = typer.Option(False, "--force", help="Replace existing output files."),
):
    """Export a checkpoint to ONNX (dynamic batch/H/W) and check it against PyTorch."""
    from scar_export.api import export_checkpoint

    export_checkpoint(checkpoint, out, custom_ops=custom_ops, fp16=fp16, engine=engine,
                      opset=opset, force=force, log=lambda m: typer.echo(m))


def main() -> None:  # `python -m scar_export.cli`
    import sys

    from scar_runtime.commands.cli import run

    sys.exit(run(["export", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

"""The ``scar`` command line.

Each command is a thin shell over a function in this package. ``scar train`` and ``scar export``
live in the optional packages (``scar_train``, ``scar_export``) and are loaded by module name only
when invoked, so ``scar --help`` stays fast and the lean runtime never imports torch.

Errors: a ``ScarError`` (bad input, bad option) prints ONE line on stderr and exits 1; anything
else is a bug in scar-net and says so in one line (``SCAR_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import typer

from scar_runtime import __version__
from scar_runtime.core.errors import ConfigError, Interrupted, ScarError, from_library, one_line

# `scar infer` exit status when every case ran but in some no lumbar spine was found (a cervical
# scan, a knee, noise): distinct from 1 (an error) so scripts can tell the two apart.
NO_LUMBAR_SPINE_EXIT = 3

app = typer.Typer(
    name="scar",
    help="SCAR-Net lumbar-spine MRI segmentation: train, export, infer, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# Commands provided by optional packages: name -> (module with a typer `app`, extra, help).
PLUGIN_COMMANDS = {
    "train": ("scar_train.cli", "train", "Train SCAR-Net on a data index (needs scar-net[train])."),
    "export": ("scar_export.cli", "export",
               "Export a checkpoint to ONNX / TensorRT (needs scar-net[export])."),
}


def _version(value: bool):
    if value:
        typer.echo(f"scar-net {__version__}")
        raise typer.Exit()


def route_library_logs(verbose: bool) -> None:
    """Library log lines and warnings (nibabel fixing a header, numpy overflow) reach the
    terminal only with --verbose: otherwise a failure is exactly one line, and a success none."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_scar", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr) if verbose else logging.NullHandler()
    handler.setFormatter(logging.Formatter("scar: log: %(name)s: %(message)s"))
    handler._scar = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit."),
          verbose: bool = typer.Option(False, "--verbose", help="Show library log lines and "
                                       "warnings (nibabel, numpy, ONNX Runtime) on stderr.")):
    route_library_logs(verbose or bool(os.environ.get("SCAR_VERBOSE")))


@app.command("labels")
def labels_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Print the label map: classes, VerSe ids, colours and key-point names."""
    import json

    from scar_runtime.labels import label_map_dict

    d = label_map_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="scar-net label map")
    for col in ("id", "name", "kind", "VerSe id", "colour"):
        t.add_column(col)
    for c in d["classes"]:
        t.add_row(str(c["id"]), c["name"], c["kind"], str(c["verse_id"]),
                  "#{:02x}{:02x}{:02x}".format(*c["color"]))
    Console().print(t)


@app.command("evaluate")
def evaluate_cmd(
    pred: Path = typer.Argument(..., help="Predicted label map (.nii/.nii.gz) or a folder."),
    gt: Path = typer.Argument(..., help="Reference mask, or a folder matched to PRED by name."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the scores as JSON."),
    pred_labels: str = typer.Option("auto", help="Ids in PRED: auto, model or verse."),
    gt_labels: str = typer.Option("auto", help="Ids in GT: auto, model or verse."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
):
    """Dice (3D and mid-sagittal 2D), HD95, centroid error and level identification."""
    from scar_runtime.evaluation.tables import evaluate_and_report

    for scheme in (pred_labels, gt_labels):
        if scheme not in ("auto", "model", "verse"):
            raise ConfigError(f"unknown label scheme {scheme!r} (valid: auto, model, verse)")
    rc = evaluate_and_report(pred, gt, json_out=json_out, pred_labels=pred_labels,
                             gt_labels=gt_labels, force=force)
    raise typer.Exit(rc)


@app.command("infer")
def infer_cmd(
    input_path: Path = typer.Argument(..., metavar="INPUT",
                                      help="A NIfTI volume (.nii/.nii.gz), a folder of them, "
                                      "or a DICOM folder (a study or a folder of studies)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: next "
                                    "to the input)."),
    model: Path | None = typer.Option(None, "--model", help="ONNX model or TensorRT engine "
                                      "(default: the model shipped with scar-net)."),
    backend: str = typer.Option("auto", help="auto, onnxruntime, openvino or tensorrt (auto: "
                                "a TensorRT engine or CUDA when present, else the fastest "
                                "installed CPU backend, measured once)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", help="auto, fp32 or bf16 (bf16: OpenVINO on a CPU "
                                  "with native BF16, only if the model's parity gate passed; "
                                  "auto: bf16 where allowed, else fp32)."),
    batch: int = typer.Option(1, help="Slices per inference batch (1: fastest and lowest "
                              "memory on a 2-core CPU; see docs/performance.md)."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
    fmt: str = typer.Option("auto", "--format", help="Segmentation file: nifti, dicom-seg or "
                            "both (default: nifti for NIfTI input, both for DICOM input)."),
    series: str | None = typer.Option(None, "--series", metavar="UID", help="The DICOM series "
                                      "to segment when a study holds several that fit."),
    straighten: bool = typer.Option(True, "--straighten/--no-straighten", help="Segment a "
                                    "spine tilted in the image again rotated upright (one or "
                                    "two extra passes, for such a scan only)."),
    roi: str = typer.Option("on", "--roi", help="on: find the spine on a few probe slices "
                            "first and run the network only in its box (the full field when "
                            "unsure); off: every pixel of every slice."),
    ray_address: str | None = typer.Option(None, "--ray", metavar="ADDRESS", help="Run the "
                                           "cases on Ray: local (Ray on this machine), auto "
                                           "(the running cluster) or ray://host:port; needs "
                                           "scar-net[cluster]."),
    ray_actors: int | None = typer.Option(None, "--ray-actors", help="Ray actors (default: "
                                          "as many as the cluster's CPUs hold)."),
    ray_cpus: int = typer.Option(1, "--ray-cpus-per-actor", help="CPUs (and inference "
                                 "threads) of each Ray actor."),
):
    """Segment lumbar vertebral bodies and discs: labels, key-points, stats and a preview.

    A folder run (or INPUT a manifest: a CSV with a `path` column and an optional `case`
    column, or one path a line) writes OUT/results.csv and results.parquet, a row per input,
    and resumes: finished cases are kept, the rest computed (--force: all)."""
    from scar_runtime.commands.infer import run_infer

    ray = None
    if roi not in ("on", "off"):
        raise ConfigError(f"--roi must be on or off, not {roi!r}")
    if ray_address is None and (ray_actors is not None or ray_cpus != 1):
        raise ConfigError("--ray-actors and --ray-cpus-per-actor go with --ray ADDRESS")
    if ray_address is not None:
        from scar_runtime.cluster.ray_run import RayOptions

        if (ray_actors is not None and ray_actors < 1) or ray_cpus < 1:
            raise ConfigError("--ray-actors and --ray-cpus-per-actor must be >= 1")
        ray = RayOptions(address=ray_address, actors=ray_actors, cpus_per_actor=ray_cpus)
    try:
        summary = run_infer(input_path, out, model=model, backend=backend, device=device,
                            batch=batch, force=force, fmt=fmt, series_uid=series,
                            precision=precision, straighten=straighten, ray=ray,
                            roi=roi == "on")
    except Interrupted as e:  # typer would make Ctrl-C a silent exit: say what was finished
        raise _Stopped(one_line(e)) from None
    for path in summary.written + summary.table:
        typer.echo(str(path))
    if summary.no_spine and (summary.failed or len(summary.done) > 1):
        typer.echo(f"no lumbar spine found in {len(summary.no_spine)} case(s): "
                   + ", ".join(n for n, _ in summary.no_spine), err=True)
    if summary.failed:
        names = ", ".join(n for n, _ in summary.failed)
        raise ScarError(f"{len(summary.failed)} of {len(summary.failed) + len(summary.done)} "
                        f"case(s) failed: {names}")
    if summary.no_spine:
        # not an error (the outputs say so, with the reason), but a script must be able to tell
        raise typer.Exit(NO_LUMBAR_SPINE_EXIT)


@app.command("review")
def review_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A results folder of `scar infer`."),
    port: int = typer.Option(8765, "--port", help="Port to serve on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (the default "
                             "is reachable from this machine only)."),
):
    """Serve a results folder as web pages until Ctrl-C: every case in a sortable table,
    a 3D viewer (NiiVue) per case with its stats and warnings, and the cohort's volumes."""
    from scar_runtime.review.server import serve

    serve(out, host=host, port=port)


def _add_plugin(name: str, module: str, extra: str, help_text: str) -> None:
    @app.command(name, help=help_text, add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _run(ctx: typer.Context):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"`scar {name}` needs the optional dependencies: "
                              f"pip install 'scar-net[{extra}]' ({e})") from e
        rc = mod.app(args=list(ctx.args), prog_name=f"scar {name}", standalone_mode=False)
        raise typer.Exit(rc if isinstance(rc, int) else 0)


for _name, (_module, _extra, _help) in PLUGIN_COMMANDS.items():
    _add_plugin(_name, _module, _extra, _help)


class _Stopped(BaseException):
    """Ctrl-C with a word on what was finished, carried past typer (which would swallow a
    KeyboardInterrupt into a silent exit 130) to ``run``, which prints it."""


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by ``main`` and by tests)."""
    route_library_logs(bool(os.environ.get("SCAR_VERBOSE")))
    try:
        rc = app(args=argv, prog_name="scar", standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into a silent exit code
            print("scar: interrupted", file=sys.stderr)
        return rc if isinstance(rc, int) else 0
    except _Stopped as e:
        print(f"scar: interrupted: {e}", file=sys.stderr)
        return 130
    except ScarError as e:
        print(f"scar: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # usage errors: typer prints usage + the problem
        show = getattr(e, "show", None)
        if show:
            show()
        else:
            print(f"scar: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        print("scar: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt as e:
        why = one_line(e)  # Interrupted says what was finished
        print(f"scar: interrupted{': ' + why if why else ''}", file=sys.stderr)
        return 130
    except MemoryError:
        print("scar: error: out of memory (try a smaller --batch)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into one line
        mapped = from_library(e)  # a library's word for bad input or a full machine
        if mapped is not None:
            print(f"scar: error: {one_line(mapped)}", file=sys.stderr)
            return mapped.exit_code
        if os.environ.get("SCAR_DEBUG"):
            raise
        print(f"scar: internal error (a bug in scar-net, please report it): "
              f"{type(e).__name__}: {one_line(e)} (SCAR_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 70


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

"""``scar infer``: one NIfTI file or a folder of them -> results in OUT_DIR.

A folder run goes on past a bad case, lists the failures at the end and exits non-zero. Every
check that can fail fast (input readable, outputs free, folder writable) runs before inference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from scar_runtime.atomic import check_output_path
from scar_runtime.errors import InputFileError, ScarError
from scar_runtime.io import is_nifti_path, load_volume, nifti_stem
from scar_runtime.outputs import check_out_dir, output_paths, write_case
from scar_runtime.segmenter import Segmenter

_OUTPUT_NAME = re.compile(r".*_seg$")


@dataclass
class InferSummary:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def find_inputs(path: Path) -> list[Path]:
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti_path(p))
    stems = {nifti_stem(p) for p in files}
    # skip our own outputs from an earlier run into the same folder (x_seg next to x)
    files = [p for p in files if not (_OUTPUT_NAME.match(nifti_stem(p))
                                      and nifti_stem(p)[:-4] in stems)]
    if not files:
        raise InputFileError(f"{path}: no .nii or .nii.gz files in this folder")
    return files


def run_infer(input_path: Path, out_dir: Path | None = None, *, model: Path | None = None,
              backend: str = "auto", device: str = "auto", batch: int = 4,
              force: bool = False, console: Console | None = None) -> InferSummary:
    console = console or Console(stderr=True)
    input_path = Path(input_path)
    inputs = find_inputs(input_path)
    if out_dir is None:
        out_dir = input_path if input_path.is_dir() else input_path.parent
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    first = None
    if len(inputs) == 1:  # a single case: fail on bad input or outputs before loading a model
        for p in output_paths(out_dir, nifti_stem(inputs[0])).values():
            check_output_path(p, force=force, inputs=inputs)
        first = load_volume(inputs[0])
    summary = InferSummary()
    with Segmenter(model, backend=backend, device=device, batch=batch) as seg:
        if len(inputs) > 1:
            console.print(f"model {seg.model.name} on {seg.runner.description}",
                          highlight=False, soft_wrap=True)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress("[bold]segment", BarColumn(), MofNCompleteColumn(),
                      "{task.fields[case]}", TimeRemainingColumn(), console=console,
                      disable=len(inputs) == 1 or not console.is_terminal) as progress:
            task = progress.add_task("cases", total=len(inputs), case="")
            for path in inputs:
                name = nifti_stem(path)
                progress.update(task, case=name)
                try:
                    for p in output_paths(out_dir, name).values():
                        check_output_path(p, force=force, inputs=inputs)
                    result = seg.segment(first if first is not None else load_volume(path))
                    summary.written += write_case(result, out_dir, name=name, force=force)
                    summary.done.append(name)
                    for line in result.report.corrections + result.report.order_warnings:
                        console.print(f"{name}: {line}", highlight=False, soft_wrap=True)
                except ScarError as e:
                    if len(inputs) == 1:
                        raise
                    summary.failed.append((path.name, str(e)))
                    console.print(f"scar: error: {e}", highlight=False, soft_wrap=True)
                progress.advance(task)
    return summary

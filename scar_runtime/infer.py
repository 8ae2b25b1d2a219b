"""``scar infer``: one NIfTI file, a folder of them, or a DICOM folder -> results in OUT_DIR.

A DICOM folder (one study, or a folder of studies, nested or flat) gives one case per study; in
each, the sagittal MR series is chosen (``scar_runtime.io.dicom``). A folder run goes on past a bad
case or study, lists the failures at the end and exits non-zero. Every check that can fail fast
(input readable, outputs free, folder writable) runs before inference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Console

from scar_runtime.atomic import InputSet, check_output_path
from scar_runtime.errors import ConfigError, InputFileError, Interrupted, ScarError
from scar_runtime.io import Volume, is_nifti_path, is_scar_output, load_volume, nifti_stem
from scar_runtime.outputs import check_out_dir, output_paths, resolve_formats, write_case
from scar_runtime.postprocess import PostprocessConfig
from scar_runtime.segmenter import DEFAULT_BATCH, Segmenter

_OUTPUT_NAME = re.compile(r".*_seg$")


@dataclass
class InferSummary:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    # cases segmented without error in which no lumbar spine was found: (name, reason)
    no_spine: list[tuple[str, str]] = field(default_factory=list)


def find_inputs(path: Path) -> list[Path]:
    """The NIfTI files of a folder, in one pass (linear in the folder's size). Entries that are
    named like volumes but cannot be read (broken or looping links, FIFOs, devices) are kept, so
    that the run lists them as failed instead of skipping them silently."""
    if not path.exists() and not path.is_symlink():
        raise InputFileError(f"{path}: no such file or folder")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if is_nifti_path(p) and not p.is_dir())
    stems = {nifti_stem(p) for p in files}
    # Skip our own outputs of an earlier run into this folder (x_seg next to x), recognised by
    # the header scar-net writes: a reference mask x_seg beside x is an input like any other,
    # never dropped, and never written over (inputs are never outputs).
    files = [p for p in files if not (_OUTPUT_NAME.match(nifti_stem(p))
                                      and nifti_stem(p)[:-4] in stems and is_scar_output(p))]
    if not files:
        raise InputFileError(f"{path}: no .nii or .nii.gz files in this folder")
    return files


@dataclass
class CaseInput:
    """One case to segment: a NIfTI file or one study of a DICOM folder."""

    name: str  # output file names start with it
    label: str  # how failures name it
    sources: tuple[Path, ...]  # the files it is read from (never written over)
    dicom: bool
    load: Callable[[], Volume]


def _failing(error: ScarError) -> Volume:
    raise error


def find_cases(path: Path, series_uid: str | None = None) -> list[CaseInput]:
    """NIfTI files (a file or a folder of them), else the studies of a DICOM folder."""
    if path.is_dir() and not any(is_nifti_path(p) and p.is_file() for p in path.iterdir()):
        return _dicom_cases(path, series_uid)
    if series_uid:
        raise ConfigError("--series chooses a series of a DICOM folder; INPUT is NIfTI")
    return [CaseInput(name=nifti_stem(p), label=p.name, sources=(p,), dicom=False,
                      load=partial(load_volume, p)) for p in find_inputs(path)]


def _dicom_cases(path: Path, series_uid: str | None) -> list[CaseInput]:
    from scar_runtime.io.dicom import describe_empty, find_series, scan_folder, study_volume

    scan = scan_folder(path)
    studies = [find_series(scan, series_uid)] if series_uid else scan.studies
    if not studies:
        raise InputFileError(describe_empty(scan))
    cases = [CaseInput(name=st.name, label=st.name, sources=tuple(st.files), dicom=True,
                       load=partial(study_volume, st, series_uid)) for st in studies]
    if not series_uid:  # unreadable files beside no readable study: a bad study too
        for bad, why in scan.broken:
            cases.append(CaseInput(name=bad.name, label=str(bad.relative_to(path)),
                                   sources=(bad,), dicom=True,
                                   load=partial(_failing, InputFileError(f"{bad}: {why}"))))
    return cases


def run_infer(input_path: Path, out_dir: Path | None = None, *, model: Path | None = None,
              backend: str = "auto", device: str = "auto", batch: int = DEFAULT_BATCH,
              force: bool = False, console: Console | None = None, fmt: str = "auto",
              series_uid: str | None = None, precision: str = "auto",
              straighten: bool = True) -> InferSummary:
    """``fmt``: nifti, dicom-seg, both or auto (NIfTI for NIfTI input, both for DICOM).
    ``straighten``: segment a tilted spine again rotated upright (straighten.py)."""
    console = console or Console(stderr=True)
    input_path = Path(input_path)
    cases = find_cases(input_path, series_uid)
    formats = {c.name: resolve_formats(fmt, dicom_input=c.dicom) for c in cases}
    if out_dir is None:
        out_dir = input_path if input_path.is_dir() else input_path.parent
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    first = None
    if len(cases) == 1:  # a single case: fail on bad input or outputs before loading a model
        for p in output_paths(out_dir, cases[0].name, formats[cases[0].name]).values():
            check_output_path(p, force=force, inputs=cases[0].sources)
        first = cases[0].load()
    summary = InferSummary()
    post = PostprocessConfig() if straighten else PostprocessConfig(straighten_passes=0)
    with Segmenter(model, backend=backend, device=device, batch=batch,
                   precision=precision, postprocess_config=post) as seg:
        algorithm = None
        if any("dicom-seg" in f for f in formats.values()):
            from scar_runtime.dicom_seg import AlgorithmInfo

            algorithm = AlgorithmInfo.for_model(seg.model)
        if len(cases) > 1:
            console.print(f"model {seg.model.name} on {seg.runner.description}",
                          highlight=False, soft_wrap=True)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress("[bold]segment", BarColumn(), MofNCompleteColumn(),
                      "{task.fields[case]}", TimeRemainingColumn(), console=console,
                      disable=len(cases) == 1 or not console.is_terminal) as progress:
            task = progress.add_task("cases", total=len(cases), case="")
            # built once: checking each case's outputs against it costs O(1), not O(cases)
            all_sources = InputSet(p for c in cases for p in c.sources)
            try:
                _run_cases(cases, seg, out_dir, formats, force, algorithm, first, all_sources,
                           summary, console, progress, task)
            except KeyboardInterrupt as e:
                raise Interrupted(
                    f"after {len(summary.done)} of {len(cases)} case(s); the outputs of finished "
                    "cases are complete, the case in progress wrote nothing") from e
    return summary


def _run_cases(cases, seg, out_dir, formats, force, algorithm, first, all_sources, summary,
               console, progress, task) -> None:
    claimed: dict[str, str] = {}  # output name -> the input that has it
    for case in cases:
        name = case.name
        progress.update(task, case=name)
        try:
            if name in claimed:  # x.nii beside x.nii.gz: two inputs, one set of output names
                raise InputFileError(f"{case.label}: same case name as {claimed[name]}, so "
                                     "their outputs would collide (rename one)")
            claimed[name] = case.label
            paths = output_paths(out_dir, name, formats[name])
            for p in paths.values():
                check_output_path(p, force=force, inputs=all_sources)
            result = seg.segment(first if first is not None else case.load())
            written = write_case(result, out_dir, name=name, force=force,
                                 formats=formats[name], algorithm=algorithm,
                                 inputs=all_sources)
            summary.written += written
            summary.done.append(name)
            rep = result.report
            lines = rep.warnings + rep.corrections + rep.order_warnings
            if not rep.lumbar_spine_found:
                summary.no_spine.append((case.label, rep.reason or "no lumbar spine"))
                lines = [f"no lumbar spine found: {rep.reason}"]
            if "dicom_seg" in paths and paths["dicom_seg"] not in written:
                lines = [*lines, "no structure found: no DICOM-SEG written"]
            for line in lines:
                console.print(f"{name}: {line}", highlight=False, soft_wrap=True)
        except ScarError as e:
            if len(cases) == 1:
                raise
            summary.failed.append((case.label, str(e)))
            console.print(f"scar: error: {e}", highlight=False, soft_wrap=True)
        progress.advance(task)

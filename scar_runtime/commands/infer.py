"""``scar infer``: one NIfTI file, or a folder of NIfTI files and DICOM studies -> OUT_DIR.

A folder gives one case per NIfTI file and one per DICOM study, at its top or nested, both kinds
in one folder too; in each study the sagittal MR series is chosen (``scar_runtime.io.dicom``).
A folder run goes on past a bad case or study, lists the failures at the end and exits non-zero.
Every check that can fail fast (input readable, outputs free, folder writable) runs before
inference. A folder run (or a manifest) also writes the results table and resumes, here or on
Ray (``scar_runtime.folder_run``, ``scar_runtime.cluster``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from scar_runtime.core.atomic import (
    InputSet,
    check_output_path,
    make_output_folder,
    signals_raise,
)
from scar_runtime.core.errors import ConfigError, InputFileError, Interrupted, ScarError
from scar_runtime.folder_run.case import (
    CaseOutcome,
    CaseSettings,
    failed_outcome,
    kept_outcome,
    run_case,
)
from scar_runtime.folder_run.manifest import is_manifest, manifest_cases
from scar_runtime.folder_run.prefetch import prefetched
from scar_runtime.folder_run.resume import ModelIdentity, resolve_model
from scar_runtime.folder_run.table import table_paths, write_table
from scar_runtime.io import Volume, load_volume, nifti_stem
from scar_runtime.io.case_writer import output_set, resolve_formats
from scar_runtime.pipeline.segmenter import DEFAULT_BATCH, Segmenter
from scar_runtime.postprocess import PostprocessConfig

if TYPE_CHECKING:
    from scar_runtime.cluster.ray_run import RayOptions

@dataclass
class InferSummary:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    # cases segmented without error in which no lumbar spine was found: (name, reason)
    no_spine: list[tuple[str, str]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # finished by an earlier run, not recomputed
    table: list[Path] = field(default_factory=list)  # results.csv (and .parquet)


def find_inputs(path: Path) -> list[Path]:
    """The NIfTI files of a folder, below it too (one walk, linear in the folder's size).
    Entries that are named like volumes but cannot be read (broken or looping links, FIFOs,
    devices) are kept, so that the run lists them as failed instead of skipping them silently.
    scar-net's own earlier outputs (a label map whose header says scar-net wrote it) are never
    inputs: a reference mask ``x_seg`` beside ``x`` is an input like any other."""
    if not path.exists() and not path.is_symlink():
        raise InputFileError(f"{path}: no such file or folder")
    if not path.is_dir():
        return [path]
    from scar_runtime.io.dicom.scan import scan_folder

    files = scan_folder(path).nifti
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


def _nifti_case(p: Path, root: Path | None) -> CaseInput:
    """A NIfTI file; below the folder's top its name carries its folders (as a study's does),
    so ``a/T2w.nii.gz`` and ``b/T2w.nii.gz`` do not collide."""
    rel = p.parent.relative_to(root).parts if root is not None else ()
    name = "_".join((*rel, nifti_stem(p)))
    label = str(p.relative_to(root)) if root is not None else p.name
    return CaseInput(name=name, label=label, sources=(p,), dicom=False,
                     load=partial(load_volume, p))


def find_cases(path: Path, series_uid: str | None = None) -> list[CaseInput]:
    """A NIfTI file, or every case of a folder: its NIfTI files and its DICOM studies, at the
    top or nested, in one walk (a folder may hold both)."""
    if not path.exists() and not path.is_symlink():
        raise InputFileError(f"{path}: no such file or folder")
    if not path.is_dir():
        if series_uid:
            raise ConfigError("--series chooses a series of a DICOM folder; INPUT is NIfTI")
        return [_nifti_case(path, None)]
    from scar_runtime.io.dicom.scan import describe_empty, scan_folder

    scan = scan_folder(path)
    if series_uid:
        if not scan.studies and scan.nifti:
            raise ConfigError("--series chooses a series of a DICOM folder; INPUT holds NIfTI "
                              "files only")
        return _dicom_cases(path, scan, series_uid)
    cases = [_nifti_case(p, path) for p in scan.nifti] + _dicom_cases(path, scan, None)
    if not cases:
        raise InputFileError(describe_empty(scan))
    return cases


def _dicom_cases(path: Path, scan, series_uid: str | None) -> list[CaseInput]:
    from scar_runtime.io.dicom import find_series, study_volume

    studies = [find_series(scan, series_uid)] if series_uid else scan.studies
    cases = [CaseInput(name=st.name, label=st.name, sources=tuple(st.files), dicom=True,
                       load=partial(study_volume, st, series_uid)) for st in studies]
    if not series_uid:  # unreadable entries beside no readable study: a bad case a folder
        by_folder: dict[Path, list[tuple[Path, str]]] = {}
        for bad, why in scan.broken:
            by_folder.setdefault(bad.parent, []).append((bad, why))
        for folder, bad in by_folder.items():
            rel = folder.relative_to(path).parts
            name = "_".join(rel) if rel else (path.resolve().name or "dicom")
            more = f" (and {len(bad) - 1} more unreadable entries)" if len(bad) > 1 else ""
            error = InputFileError(f"{bad[0][0]}: {bad[0][1]}{more}")
            cases.append(CaseInput(name=name, label=str(folder.relative_to(path.parent)),
                                   sources=tuple(b for b, _ in bad), dicom=True,
                                   load=partial(_failing, error)))
    return cases


def run_infer(input_path: Path, out_dir: Path | None = None, **options) -> InferSummary:
    """``_run_infer`` with SIGTERM and SIGHUP stopping the run as Ctrl-C does (a job scheduler's
    kill ends it with one line saying what was finished, not a silent -15)."""
    with signals_raise():
        return _run_infer(input_path, out_dir, **options)


def _run_infer(input_path: Path, out_dir: Path | None = None, *, model: Path | None = None,
               backend: str = "auto", device: str = "auto", batch: int = DEFAULT_BATCH,
               force: bool = False, console: Console | None = None, fmt: str = "auto",
               series_uid: str | None = None, precision: str = "auto",
               straighten: bool = True, ray: RayOptions | None = None,
               roi: bool = True) -> InferSummary:
    """``fmt``: nifti, dicom-seg, both or auto (NIfTI for NIfTI input, both for DICOM).
    ``straighten``: segment a tilted spine again rotated upright (straighten.py).
    ``roi``: find the spine on probe slices first and run the network in its box only
    (pipeline/roi.py); False: the full field.
    ``ray``: run the cases on a Ray cluster (cluster/ray_run.py) instead of in this process.

    A folder or manifest run writes OUT/results.csv (and .parquet), a row per input, and
    resumes: finished cases (all outputs there, same model) are kept, the rest computed
    (``force``: all of them). A run of ONE case keeps the single-file contract: existing
    outputs are an error without ``force``, and a failure is raised with nothing written."""
    console = console or Console(stderr=True)
    input_path = Path(input_path)
    manifest = is_manifest(input_path)
    cases = (manifest_cases(input_path, series_uid) if manifest
             else find_cases(input_path, series_uid))
    formats = {c.name: resolve_formats(fmt, dicom_input=c.dicom) for c in cases}
    if out_dir is None:
        out_dir = input_path if input_path.is_dir() else input_path.parent
    out_dir = Path(out_dir)
    make_output_folder(out_dir)
    single = len(cases) == 1
    first = None
    if single:  # a single case: fail on bad input or outputs before loading a model
        for p in output_set(out_dir, cases[0].name).values():  # also files it will not write
            check_output_path(p, force=force, inputs=cases[0].sources)
        first = cases[0].load()  # on Ray only a check: the actor reads it again
    input_paths = [p for c in cases for p in c.sources] + ([input_path] if manifest else [])
    folder_run = manifest or input_path.is_dir()
    if folder_run:  # the table must not be an input (a manifest named results.csv in OUT)
        for p in table_paths(out_dir):
            check_output_path(p, force=True, inputs=InputSet(input_paths))
    model_path = resolve_model(model)
    identity = ModelIdentity.of(model_path)
    algorithm = None
    if any("dicom-seg" in f for f in formats.values()):
        from scar_runtime.io.dicom_seg import AlgorithmInfo

        algorithm = AlgorithmInfo(model_name=identity.name, model_sha256=identity.sha256)
    settings = CaseSettings(out_dir=out_dir, model=identity, force=force,
                            resume=not single, algorithm=algorithm)
    summary = InferSummary()
    outcomes: dict[int, CaseOutcome] = {}

    def record(index: int, outcome: CaseOutcome) -> None:
        outcomes[index] = outcome
        _report(outcome, summary, console, quiet_error=single)

    todo = _plan(cases, formats, settings, record)
    if summary.kept:
        console.print(f"{len(summary.kept)} case(s) already finished with this model: kept "
                      "(--force recomputes them)", highlight=False, soft_wrap=True)
    post = PostprocessConfig() if straighten else PostprocessConfig(straighten_passes=0)
    segmenter = {"model": model_path, "backend": backend, "device": device, "batch": batch,
                 "precision": precision, "postprocess_config": post, "roi": roi}
    try:
        if todo and ray is not None:
            from scar_runtime.cluster.ray_run import run_on_ray

            run_on_ray(cases, todo, settings, formats, segmenter,
                       [str(p) for p in input_paths], ray, record,
                       on_start=lambda line: console.print(line, highlight=False))
        elif todo:
            _run_local(cases, todo, settings, formats, segmenter, InputSet(input_paths),
                       first, console, record)
    except KeyboardInterrupt as e:
        why = f"{e}, " if str(e) else ""  # "terminated by SIGTERM"; Ctrl-C says nothing
        raise Interrupted(
            f"{why}after {len(outcomes)} of {len(cases)} case(s); the outputs of finished "
            "cases are complete, the case in progress wrote nothing") from e
    if single and outcomes[0].status == "failed":
        raise outcomes[0].error or ScarError(outcomes[0].row["error"])  # Ray: only its words
    if folder_run:
        written, note = write_table(out_dir, [outcomes[i].row for i in range(len(cases))],
                                    InputSet(input_paths))
        summary.table = written
        if note:
            console.print(f"scar: note: {note}", highlight=False, soft_wrap=True)
    return summary


def _plan(cases: list[CaseInput], formats: dict, settings: CaseSettings,
          record: Callable[[int, CaseOutcome], None]) -> list[int]:
    """The indices of the cases to compute; the others (a name taken twice, a case an earlier
    run finished) get their outcome now."""
    claimed: dict[str, str] = {}  # output name -> the input that has it
    todo = []
    for i, case in enumerate(cases):
        if case.name in claimed:  # x.nii beside x.nii.gz: two inputs, one set of output names
            record(i, failed_outcome(case, InputFileError(
                f"{case.label}: same case name as {claimed[case.name]}, so their outputs "
                "would collide (rename one)")))
            continue
        claimed[case.name] = case.label
        kept = kept_outcome(case, settings, formats[case.name])
        if kept is not None:
            record(i, kept)
        else:
            todo.append(i)
    return todo


def _run_local(cases, todo, settings, formats, segmenter, inputs, first, console,
               record) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Segmenter(**segmenter) as seg:
        if len(cases) > 1:
            console.print(f"model {seg.model.name} on {seg.runner.description}",
                          highlight=False, soft_wrap=True)
        with Progress("[bold]segment", BarColumn(), MofNCompleteColumn(),
                      "{task.fields[case]}", TimeRemainingColumn(), console=console,
                      disable=len(cases) == 1 or not console.is_terminal) as progress:
            task = progress.add_task("cases", total=len(todo), case="")
            # a single case was read before the model was loaded; in a folder run each case
            # is read while the one before it is segmented
            ahead = (((i, first) for i in todo) if first is not None or len(todo) == 1
                     else prefetched(todo, lambda i: cases[i].load()))
            for i, volume in ahead:
                progress.update(task, case=cases[i].name)
                record(i, run_case(cases[i], seg, settings, formats[cases[i].name], inputs,
                                   volume=volume))
                progress.advance(task)


def _report(outcome: CaseOutcome, summary: InferSummary, console: Console, *,
            quiet_error: bool) -> None:
    """One case's lines on the console, and its place in the summary."""
    row = outcome.row
    if row["status"] == "failed":
        summary.failed.append((outcome.label, row["error"]))
        if not quiet_error:  # a single case's error is raised, and printed once, by the CLI
            console.print(f"scar: error: {row['error']}", highlight=False, soft_wrap=True)
        return
    summary.done.append(outcome.name)
    summary.written += [Path(p) for p in outcome.written]
    if row["computed"] == "kept":
        summary.kept.append(outcome.name)
    if row["status"] == "no_spine":
        summary.no_spine.append((outcome.label, row["reason"] or "no lumbar spine"))
    for line in outcome.messages:
        console.print(line, highlight=False, soft_wrap=True)

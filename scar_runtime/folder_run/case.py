"""One case of a folder run, start to finish: the only copy of the per-case work.

The local loop (infer.py) and each Ray actor (cluster/ray_run.py) call ``run_case`` with their
own Segmenter; it never raises for a bad case: whatever goes wrong (unreadable file, invalid
image, out of memory, even a bug) comes back as a ``failed`` outcome with its reason, so one case
never ends a cohort's job. Ctrl-C (KeyboardInterrupt) still stops the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scar_runtime.core.atomic import InputSet, check_output_path
from scar_runtime.core.errors import OutputError, ScarError, from_library
from scar_runtime.folder_run.resume import (
    ModelIdentity,
    finished_stats,
    leftovers_to_replace,
    read_stats,
)
from scar_runtime.folder_run.table import failed_row, row_from_stats
from scar_runtime.io.case_writer import output_paths, output_set, write_case

if TYPE_CHECKING:
    from scar_runtime.commands.infer import CaseInput
    from scar_runtime.io import Volume
    from scar_runtime.io.dicom_seg import AlgorithmInfo
    from scar_runtime.pipeline.segmenter import Segmenter


@dataclass(frozen=True)
class CaseSettings:
    """What every case of one run shares (picklable: Ray sends it to each actor)."""

    out_dir: Path
    model: ModelIdentity
    force: bool = False  # replace existing outputs, finished or not
    # a folder run of several cases: keep finished cases, replace scar-net's own leftovers of
    # unfinished ones; a single case keeps the single-file contract (existing outputs: error)
    resume: bool = False
    algorithm: AlgorithmInfo | None = None  # needed for DICOM-SEG output


@dataclass
class CaseOutcome:
    name: str
    label: str  # how messages name the input
    row: dict  # its row of the results table
    written: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # warnings to print, "name: ..."
    error: BaseException | None = None  # the local run re-raises it for a single case

    @property
    def status(self) -> str:
        return self.row["status"]

    def to_json(self) -> dict:
        """Everything but the exception object (its words are in the row)."""
        return {"name": self.name, "label": self.label, "row": self.row,
                "written": self.written, "messages": self.messages}

    @classmethod
    def from_json(cls, doc: dict) -> CaseOutcome:
        return cls(name=doc["name"], label=doc["label"], row=doc["row"],
                   written=list(doc["written"]), messages=list(doc["messages"]))


def case_source(case: CaseInput) -> str:
    """The input a row names: the file, or the DICOM study's folder."""
    if len(case.sources) == 1:
        return str(case.sources[0])
    try:
        return os.path.commonpath([str(p) for p in case.sources])
    except ValueError:  # no sources at all, or a mix of absolute and relative paths
        return case.label


def failed_outcome(case: CaseInput, error: BaseException, seconds: float | None = None,
                   message: str | None = None) -> CaseOutcome:
    words = message or str(error)
    return CaseOutcome(name=case.name, label=case.label, error=error,
                       row=failed_row(case.name, case_source(case), words, seconds))


def kept_outcome(case: CaseInput, settings: CaseSettings,
                 formats: tuple[str, ...]) -> CaseOutcome | None:
    """The outcome of a case an earlier run finished with this model, or None."""
    if not settings.resume or settings.force:
        return None
    doc = finished_stats(settings.out_dir, case.name, formats, settings.model)
    if doc is None:
        return None
    return CaseOutcome(name=case.name, label=case.label,
                       row=row_from_stats(case.name, case_source(case), doc, kept=True))


def _replace_flag(paths: dict[str, Path], settings: CaseSettings) -> bool:
    """Whether this case may replace files of its own names that are there already."""
    if settings.force:
        return True
    if not settings.resume:
        return False
    if leftovers_to_replace(paths, settings.model):
        return True
    doc = read_stats(paths["stats"]) if paths["stats"].exists() else None
    if doc is not None and isinstance(doc.get("model"), dict):
        other = doc["model"].get("name") or "another model"
        raise OutputError(f"{paths['stats']} holds the results of {other}, not of "
                          f"{settings.model.name} (use --force to replace them)")
    return False


def run_case(case: CaseInput, seg: Segmenter, settings: CaseSettings, formats: tuple[str, ...],
             inputs: InputSet, volume: Volume | None = None) -> CaseOutcome:
    """Segment one case and write its outputs (all or nothing), or say why it failed.
    ``volume``: the case already loaded (a single-case run reads it before the model)."""
    clock = time.perf_counter()
    try:
        kept = kept_outcome(case, settings, formats)
        if kept is not None:  # a Ray task retried after its actor died having finished it
            return kept
        paths = output_paths(settings.out_dir, case.name, formats)
        every = output_set(settings.out_dir, case.name)  # also files this run does not write
        replace = _replace_flag(every, settings)
        for p in every.values():
            check_output_path(p, force=replace, inputs=inputs)
        result = seg.segment(volume if volume is not None else case.load())
        run_info = {"model": settings.model.to_json(),
                    "seconds": round(time.perf_counter() - clock, 3),
                    # spine-first or full-field, why, and the box (pipeline/roi.py)
                    "inference_path": result.roi}
        written = write_case(result, settings.out_dir, name=case.name, force=replace,
                             formats=formats, algorithm=settings.algorithm, inputs=inputs,
                             run_info=run_info)
    except ScarError as e:
        return failed_outcome(case, e, time.perf_counter() - clock)
    except Exception as e:  # noqa: BLE001 - a cohort job records a case's failure and goes on
        mapped = from_library(e)  # a library's word for bad input or a full machine
        words = str(mapped) if mapped is not None else (
            f"internal error (a bug in scar-net, please report it): {type(e).__name__}: {e}")
        return failed_outcome(case, e, time.perf_counter() - clock, " ".join(words.split()))
    doc = read_stats(paths["stats"]) or {}
    outcome = CaseOutcome(name=case.name, label=case.label, written=[str(p) for p in written],
                          row=row_from_stats(case.name, case_source(case), doc, kept=False))
    rep = result.report
    lines = rep.warnings + rep.corrections + rep.order_warnings
    if not rep.lumbar_spine_found:
        lines = [f"no lumbar spine found: {rep.reason}"]
    if "dicom_seg" in paths and paths["dicom_seg"] not in written:
        lines = [*lines, "no structure found: no DICOM-SEG written"]
    outcome.messages = [f"{case.name}: {line}" for line in lines]
    return outcome

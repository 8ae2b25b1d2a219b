"""Helpers the tests share: real data paths, the `scar` CLI as a user runs it, assertions, and
a catalogue of broken inputs. (Fixtures and hooks live in conftest.py.)"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
# The larger public sets live beside the repository (../shared/data); a user's clone has none.
SHARED_DATA = Path(os.environ.get("SCAR_SHARED_DATA", REPO.parent / "shared" / "data"))
SHARED_INDEX = SHARED_DATA / "index.json"

CHU_IMG = TEST_DATA / "fcs_vb2_chu_06_2mm_img.nii.gz"
CHU_SEG = TEST_DATA / "fcs_vb2_chu_06_2mm_seg.nii.gz"
IVD_IMG = TEST_DATA / "fcs_ivd_menezes_25_2mm_img.nii.gz"
IVD_SEG = TEST_DATA / "fcs_ivd_menezes_25_2mm_seg.nii.gz"
SPIDER_IMG = TEST_DATA / "spider_005_2mm_img.nii.gz"  # vertebral bodies AND discs
SPIDER_SEG = TEST_DATA / "spider_005_2mm_seg.nii.gz"
CERVICAL_IMG = TEST_DATA / "cervical_tptbox" / "sub-mri_label-6_T2w.nii.gz"
CERVICAL_SEG = TEST_DATA / "cervical_tptbox" / "sub-mri_seg-vert_label-6_msk.nii.gz"

needs_shared = pytest.mark.skipif(
    not SHARED_INDEX.is_file(),
    reason=f"the public data sets are not at {SHARED_DATA} (set SCAR_SHARED_DATA)")


def default_signals() -> None:
    """``preexec_fn`` for a child that is sent signals: SIGINT, SIGTERM and SIGHUP as in a
    user's terminal. A child inherits IGNORED signals: under `nohup make test &` (or any
    background job of a shell without job control) SIGHUP and SIGINT are ignored, and the
    runtime rightly leaves an ignored signal ignored, so the signal tests would test nothing
    but the way the suite was started (they failed so once)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run_scar(*args: str, timeout: float = 300, env: dict | None = None):
    """Run the real `scar` CLI in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "scar_runtime", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc, *needles: str):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    for n in needles:
        assert n.lower() in err.lower(), f"{n!r} not in {err!r}"


def assert_infer_refuses(tmp_path: Path, make_input, *args: str) -> None:
    """`scar infer` on the folder ``make_input(folder)`` builds (it returns a word the error
    must name): one line, an exit status other than 0 and 70 (70 is a bug), nothing written,
    the input untouched."""
    folder = tmp_path / "in"
    word = make_input(folder)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    out = tmp_path / "out"
    out.mkdir()
    proc = run_scar("infer", folder, "-o", out, *args)
    assert_one_line_error(proc, word)
    assert proc.returncode not in (0, 70)
    assert list(out.iterdir()) == []
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def assert_same_geometry(out, src):
    """A written label image sits exactly on the input's grid: shape, affine, qform/sform+codes."""
    assert out.shape == src.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    for form in ("qform", "sform"):
        a, ca = getattr(out.header, f"get_{form}")(coded=True)
        b, cb = getattr(src.header, f"get_{form}")(coded=True)
        assert ca == cb
        np.testing.assert_allclose(a, b, atol=1e-5)


def _save(img, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken inputs, each with a word the one-line error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = nib.load(str(CHU_IMG))
    data = np.asanyarray(good.dataobj).astype(np.float32)
    aff = good.affine
    out: dict[str, tuple[Path, str]] = {}
    out["missing"] = (folder / "does_not_exist.nii.gz", "no such file")
    (folder / "empty.nii.gz").write_bytes(b"")
    out["empty file"] = (folder / "empty.nii.gz", "empty")
    (folder / "text.nii.gz").write_text("this is not an image\n")
    out["text named .nii.gz"] = (folder / "text.nii.gz", "gzip")
    raw = CHU_IMG.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    out["truncated gzip"] = (folder / "truncated.nii.gz", "truncated")
    (folder / "garbage.nii.gz").write_bytes(gzip.compress(os.urandom(2000)))
    out["gzip of garbage"] = (folder / "garbage.nii.gz", "nifti")
    (folder / "notnifti.txt").write_text("hello")
    out["not NIfTI extension"] = (folder / "notnifti.txt", "not a nifti")
    out["2D"] = (_save(nib.Nifti1Image(data[:, :, 0], aff), folder / "two_d.nii.gz"), "2D")
    out["4D"] = (_save(nib.Nifti1Image(np.stack([data, data], -1), aff), folder / "four_d.nii.gz"),
                 "4D")
    nan = data.copy()
    nan[10, 10, 10] = np.nan
    out["NaN voxels"] = (_save(nib.Nifti1Image(nan, aff), folder / "nan.nii.gz"), "NaN")
    out["constant"] = (_save(nib.Nifti1Image(np.full_like(data, 7), aff), folder / "const.nii.gz"),
                       "constant")
    out["1x1x1"] = (_save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), aff),
                          folder / "tiny.nii.gz"), "small")
    out["complex"] = (_save(nib.Nifti1Image(data.astype(np.complex64), aff),
                            folder / "complex.nii.gz"), "voxel type")
    sing = aff.copy()
    sing[:3, 0] = 0  # first axis collapsed: nibabel refuses to build it, so write the sform raw
    simg = nib.Nifti1Image(data, None)
    simg.header.set_sform(sing, code=1)
    simg.header.set_qform(None, code=0)
    out["singular affine"] = (_save(simg, folder / "singular.nii.gz"), "singular")
    # A header claiming 4000^3 voxels in front of a tiny payload.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.float32)
    (folder / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    out["gigantic header"] = (folder / "huge.nii", "large")
    return out


def write_mini_index(folder: Path) -> Path:
    """A tiny real-data index: a vertebra case, a disc case, a key-point-only case (the vertebra
    image with key-points taken from its own mask's centroids) and a disc case for val."""
    import json
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for p in (CHU_IMG, CHU_SEG, IVD_IMG, IVD_SEG):
        shutil.copy(p, folder / p.name)
    seg = nib.load(str(CHU_SEG))
    data = np.asanyarray(seg.dataobj)
    kps = {}
    for level, vid in (("L1", 20), ("L2", 21), ("L3", 22), ("L4", 23), ("L5", 24)):
        ijk = np.argwhere(data == vid)
        c = ijk.mean(0)
        kps[level] = {"label": vid, "voxel": c.tolist(),
                      "world_mm": nib.affines.apply_affine(seg.affine, c).tolist(),
                      "slices": [int(ijk[:, 2].min()), int(ijk[:, 2].max())]}
    (folder / "chu_kp.json").write_text(json.dumps({"keypoints": kps}))
    vb_levels = ["L5", "L4", "L3", "L2", "L1", "T12", "T11"]
    ivd_levels = ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"]
    entries = [
        {"dataset": "vb", "case": "06", "image": CHU_IMG.name, "seg": CHU_SEG.name,
         "levels": vb_levels, "split": "train"},
        {"dataset": "ivd", "case": "25", "image": IVD_IMG.name, "seg": IVD_SEG.name,
         "levels": ivd_levels, "split": "train"},
        {"dataset": "kp", "case": "06", "image": CHU_IMG.name, "keypoints": "chu_kp.json",
         "levels": vb_levels[:5], "split": "train", "subject": "chu06"},
        {"dataset": "ivdval", "case": "25", "image": IVD_IMG.name, "seg": IVD_SEG.name,
         "levels": ivd_levels, "split": "val", "subject": "ivd25-val"},
    ]
    p = folder / "index.json"
    p.write_text(json.dumps(entries, indent=1))
    return p

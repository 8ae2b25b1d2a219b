"""`scar review OUT` over a real results folder, in a real browser.

The folder is made once by the real `scar infer` on the test fixtures, the shipped sample, a
cervical scan (no lumbar spine), a DICOM study and a broken file (a failed case). The server runs
as users start it (a `scar review` subprocess); the pages are checked through Debian's Chromium
driven by Playwright (never a browser Playwright downloads), the traversal requests through raw
HTTP, byte for byte as sent.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CERVICAL_IMG,
    CHU_IMG,
    IVD_IMG,
    REPO,
    SPIDER_IMG,
    TEST_DATA,
    assert_one_line_error,
    default_signals,
    run_scar,
)
from PIL import Image

from scar_runtime import labels as L

pytestmark = pytest.mark.xdist_group("review")

SAMPLE_IMG = REPO / "scar_runtime" / "sample" / "chu2015_14_crop_img.nii.gz"
DICOM_STUDY = TEST_DATA / "fcs_vb2_chu_06_2mm_dicom"
SHOWN_CASE = "chu2015_14_crop_img"  # the sample: 1 mm voxels, the clearest screenshot
# The README's screenshots come from this test: `SCAR_SCREENSHOTS=docs/images make test` renews
# them; an ordinary run writes them to a temporary folder (a test run never edits tracked files).
SCREENSHOTS = Path(os.environ.get("SCAR_SCREENSHOTS") or tempfile.mkdtemp(prefix="scar-shots-"))
CHROMIUM = Path("/usr/bin/chromium")
# Software WebGL (SwiftShader): there is no GPU, and Chromium only falls back to it when told
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
VIEWER_TIMEOUT_MS = 180_000  # NiiVue reads and draws the volumes in software GL on 2 busy cores

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="needs playwright (the dev extra) and Debian's Chromium at /usr/bin/chromium "
           "(`make install` installs it as root; else: apt-get install chromium)")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """OUT of one real folder run: 5 segmented cases, a no-spine case, a DICOM study, a failure."""
    base = tmp_path_factory.mktemp("review")
    inputs, out = base / "inputs", base / "out"
    inputs.mkdir()
    for src in (CHU_IMG, IVD_IMG, SPIDER_IMG, SAMPLE_IMG, CERVICAL_IMG):
        shutil.copy(src, inputs / src.name)
    shutil.copytree(DICOM_STUDY, inputs / "chu06_dicom")
    (inputs / "broken_img.nii.gz").write_bytes(SPIDER_IMG.read_bytes()[:1000])  # truncated
    p = run_scar("infer", inputs, "-o", out, timeout=900)
    assert p.returncode == 1 and "1 of 7 case(s) failed: broken_img" in p.stderr, p.stderr
    assert (out / "results.csv").is_file()
    return out


def _read_first_line(proc: subprocess.Popen, timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:
        proc.kill()
        raise AssertionError(f"scar review printed nothing in {timeout} s: "
                             f"{proc.stderr.read() if proc.poll() is not None else ''}")
    return got[0]


@contextmanager
def review_server(out: Path, stop: signal.Signals = signal.SIGINT):
    """`scar review OUT --port 0` running; yields its base URL; Ctrl-C (SIGINT) stops it, or
    ``stop`` (SIGTERM: a service manager)."""
    proc = subprocess.Popen([sys.executable, "-m", "scar_runtime", "review", str(out),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, preexec_fn=default_signals)
    try:
        line = _read_first_line(proc, 60)
        m = re.search(r"at (http://127\.0\.0\.1:\d+)/ \(Ctrl-C stops\)", line)
        assert m, line
        yield m.group(1)
    finally:
        proc.send_signal(stop)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    # Ctrl-C is how a user ends it (SIGTERM a service manager): a clean stop, no traceback
    assert proc.returncode == 0 and err.strip() == "scar review: stopped", err


@pytest.fixture(scope="module")
def server(results):
    with review_server(results) as url:
        yield url


def raw_get(base: str, target: str, method: str = "GET", host: str | None = None):
    """(status, body) of a request whose target is sent exactly as written (no client-side
    normalising of `..` or percent-escapes)."""
    hostport = base.removeprefix("http://")
    conn = http.client.HTTPConnection(hostport, timeout=30)
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or hostport)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


# ------------------------------------------------------------------ without a browser


def test_traversal_and_writes_are_refused(results, server, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.txt"
    secret.write_text("TOP SECRET")
    (results / "link.txt").symlink_to(secret)  # links inside OUT that lead out
    (results / "linkdir").symlink_to(outside, target_is_directory=True)
    refused = [
        "/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/%2E%2E%2Fsecret.txt",
        "/files/..%2fsecret.txt", "/files/..%5csecret.txt", "/files//etc/passwd",
        "/files/%2fetc%2fpasswd", "/files/link.txt", "/files/linkdir/secret.txt",
        f"/files/{outside}/secret.txt", "/case/..%2f..%2fsecret.txt", "/case/../secret.txt",
        f"/case/{SHOWN_CASE}/../../secret.txt", f"/case/{SHOWN_CASE}/%2e%2e/link.txt",
        "/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py",
        "/../../etc/passwd", "/etc/passwd", "/files/%00", "/files/results.csv%00.png",
    ]
    for target in refused:
        status, body = raw_get(server, target)
        assert status in (403, 404), (target, status)
        assert b"TOP SECRET" not in body and b"root:" not in body, target
    # the same files, asked for the right way, are there: the refusals are not a broken server
    status, body = raw_get(server, "/files/results.csv")
    assert status == 200 and body.startswith(b"case,source,status")
    status, body = raw_get(server, f"/case/{SHOWN_CASE}/seg.nii.gz")
    assert status == 200 and body[:2] == b"\x1f\x8b"
    # read-only: no method writes
    for method in ("POST", "PUT", "DELETE"):
        assert raw_get(server, "/files/results.csv", method)[0] == 501
    # a page elsewhere cannot reach the loopback server under another host name (DNS rebinding)
    assert raw_get(server, "/", host="evil.example:80")[0] == 403


def test_the_image_route_serves_only_the_recorded_nifti(results, tmp_path_factory):
    """The source image is served from the path the case's stats.json records, and only when
    it holds NIfTI: an edited record pointing at another file gives nothing."""
    out = tmp_path_factory.mktemp("edited") / "out"
    shutil.copytree(results, out, symlinks=True)
    fake = out.parent / "fake.nii.gz"
    fake.write_text("TOP SECRET, not an image")
    stats = out / f"{SHOWN_CASE}_stats.json"
    doc = json.loads(stats.read_text())
    doc["input"] = str(fake)
    stats.write_text(json.dumps(doc))
    with review_server(out) as url:
        status, body = raw_get(url, f"/case/{SHOWN_CASE}/image.nii.gz")
        assert status == 404 and b"TOP SECRET" not in body
        page = raw_get(url, f"/case/{SHOWN_CASE}")[1].decode()
        assert '"image": null' in page and "is no longer there" in page
        # an untouched case still gets its image: the real bytes of its input
        status, body = raw_get(url, "/case/fcs_vb2_chu_06_2mm_img/image.nii.gz")
        assert status == 200 and body == CHU_IMG.read_bytes()


def _case_data(page_html: str) -> dict:
    m = re.search(r'<script type="application/json" id="case-data">(.*?)</script>', page_html,
                  re.S)
    assert m, "no viewer data on the page"
    return json.loads(m.group(1))


def test_dicom_case_shows_the_segmentation_alone(server):
    html = raw_get(server, "/case/chu06_dicom")[1].decode()
    data = _case_data(html)
    assert data["image"] is None and "DICOM study" in data["no_image_reason"]
    status, body = raw_get(server, data["seg"])
    assert status == 200 and body[:2] == b"\x1f\x8b"
    assert len(data["keypoints"]) == 10 and all(len(k["mm"]) == 3 for k in data["keypoints"])


def test_cohort_page_marks_the_case(results, server):
    html = raw_get(server, f"/cohort/{SHOWN_CASE}")[1].decode()
    stats = json.loads((results / f"{SHOWN_CASE}_stats.json").read_text())
    found = [n for n, s in stats["structures"].items() if s["present"]]
    assert html.count('class="marked"') == len(found) >= 10  # a diamond per level it has
    assert "<svg" in html and html.count("<circle") > 20  # the other cases' volumes
    assert 'class="marked"' not in raw_get(server, "/cohort")[1].decode()
    assert raw_get(server, "/cohort/no_such_case")[0] == 404


def test_a_folder_without_the_table_is_read_from_its_stats(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats_only") / "out"
    shutil.copytree(results, out, ignore=shutil.ignore_patterns("results.*", "link*"))
    with review_server(out, stop=signal.SIGTERM) as url:
        html = raw_get(url, "/")[1].decode()
    for name in ("chu06_dicom", SHOWN_CASE, "sub-mri_label-6_T2w"):
        assert f">{name}</a>" in html
    assert "broken_img" not in html  # a failed case leaves no stats: only the table knows it


def test_niivue_and_its_licence_ship_in_the_package():
    """The viewer works offline: NiiVue's pinned single-file build is a package file, listed
    in the wheel's package data with its licence, and is the file NOTICE.md names."""
    import hashlib
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")
    from scar_runtime.review.static_files import ASSETS, NIIVUE_VERSION, asset

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["scar_runtime"]
    for name in ASSETS:
        path, _ = asset(name)
        assert path.is_file() and any(fnmatch(f"review/assets/{name}", g) for g in globs), name
    notice = asset("NOTICE.md")[0].read_text()
    bundle = asset("niivue.umd.js")[0].read_bytes()
    assert f"@niivue/niivue@{NIIVUE_VERSION}" in notice
    assert hashlib.sha256(bundle).hexdigest() in notice
    assert "BSD 2-Clause" in asset("NIIVUE_LICENSE")[0].read_text()
    assert b".niivue={}" in bundle[:1000]  # the UMD wrapper: a plain <script> defines `niivue`


def test_bad_folders_and_ports_are_one_line_errors(results, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_scar("review", empty), "no scar-net results")
    assert_one_line_error(run_scar("review", tmp_path / "missing"), "no such folder")
    assert_one_line_error(run_scar("review", results / "results.csv"), "is a file")
    assert_one_line_error(run_scar("review", results, "--port", "70000"), "--port")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run_scar("review", results, "--port", port), "in use", "--port")


# ------------------------------------------------------------------ in Chromium


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None or not CHROMIUM.exists():
        pytest.skip("needs playwright and /usr/bin/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors  # no script on any page threw


def _wait_viewer(page) -> None:
    page.wait_for_function("window.scarViewer !== undefined", timeout=VIEWER_TIMEOUT_MS)
    assert page.evaluate("window.scarViewer.ready"), page.evaluate("window.scarViewer.error")
    page.wait_for_timeout(500)  # the first frame after loading


def _canvas(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot()))
                      .convert("RGB")).astype(int)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees; unchanged when grey is added or the colour is scaled, so a label colour
    blended over a grey image keeps its label's hue."""
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


@needs_browser
@pytest.mark.slow
def test_index_lists_every_case_flagged_first_sortable_filterable(results, server, page):
    page.goto(server + "/")
    rows = page.locator("#cases tbody tr")
    names = [t.strip() for t in rows.locator("td:first-child").all_inner_texts()]
    expected = [r.split(",", 1)[0] for r in (results / "results.csv").read_text().splitlines()[1:]]
    assert sorted(names) == sorted(expected) and len(names) == 7
    flagged = [r == "1" for r in (rows.nth(i).get_attribute("data-flagged")
                                  for i in range(rows.count()))]
    assert flagged == sorted(flagged, reverse=True) and sum(flagged) >= 3  # flagged first
    row = page.locator("tr", has=page.locator("a", has_text="broken_img"))
    assert row.locator(".status").inner_text() == "failed"
    assert "truncated gzip file" in row.inner_text()
    assert page.locator("tr", has=page.locator("a", has_text="sub-mri_label-6_T2w")) \
        .locator(".status").inner_text() == "no spine"
    page.screenshot(path=str(SCREENSHOTS / "review_index.png"), full_page=True)
    # sorting: the confidence column, then reversed (blanks always last)
    page.locator("th", has_text="confidence").click()
    conf = [float(v) for v in rows.locator("td:nth-child(5)").all_inner_texts() if v]
    assert conf == sorted(conf) and len(conf) == 6
    page.locator("th", has_text="confidence").click()
    conf = [float(v) for v in rows.locator("td:nth-child(5)").all_inner_texts() if v]
    assert conf == sorted(conf, reverse=True)
    # filtering
    page.fill("#filter-text", "spider")
    assert page.locator("#cases tbody tr:not([hidden])").count() == 1
    page.fill("#filter-text", "")
    page.select_option("#filter-status", "failed")
    assert page.locator("#cases tbody tr:not([hidden]) a").all_inner_texts() == ["broken_img"]
    page.select_option("#filter-status", "")
    page.check("#filter-flagged")
    assert page.locator("#cases tbody tr:not([hidden])").count() == sum(flagged)


@needs_browser
@pytest.mark.slow
def test_case_viewer_shows_the_image_and_the_coloured_overlay(server, page):
    page.goto(server + "/")
    page.click(f"a:text-is('{SHOWN_CASE}')")
    page.wait_for_url(f"**/case/{SHOWN_CASE}")
    _wait_viewer(page)
    assert page.evaluate("window.scarViewer.nv.volumes.length") == 2  # image + segmentation
    page.screenshot(path=str(SCREENSHOTS / "review_case.png"), full_page=True)
    with_overlay = _canvas(page)
    # the page's overlay slider moved to 0, as a user drags it (Playwright cannot fill a range)
    page.eval_on_selector("#overlay-opacity",
                          "e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
    page.wait_for_timeout(500)
    image_only = _canvas(page)
    # the image: many grey pixels of varied brightness
    spread = image_only.max(axis=2) - image_only.min(axis=2)
    grey = (spread < 12) & (image_only.mean(axis=2) > 40)
    assert grey.sum() > 20_000
    assert np.unique(image_only[grey][:, 0] // 16).size >= 8  # not one flat grey
    # the overlay: the pixels the opacity slider changed are grey without it, and coloured
    # with it, in the hues of the label map (the legend, the key-points and the crosshair do
    # not change with the overlay's opacity, so they are not counted)
    changed = np.abs(with_overlay - image_only).sum(axis=2) > 30
    assert changed.sum() > 5_000
    assert (spread[changed] < 12).mean() > 0.9
    hues = _hue(with_overlay[changed])
    seen = set()
    for s in L.STRUCTURES:
        label_hue = _hue(np.array(s.color))
        near = np.abs((hues - label_hue + 180) % 360 - 180) < 6
        if near.sum() > 200:
            seen.add(s.name)
    assert len(seen) >= 6, seen  # at least six of the ten levels' colours on screen
    assert page.locator("#warnings").inner_text().strip() == "none"
    assert page.locator("#next-flagged").count() + page.locator("#prev-flagged").count() >= 1


@needs_browser
@pytest.mark.slow
def test_scrolling_changes_the_slice(server, page):
    page.goto(f"{server}/case/{SHOWN_CASE}")
    _wait_viewer(page)
    page.click("button[data-slice-type=sliceTypeSagittal]")
    page.wait_for_timeout(300)
    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    before_pos = page.evaluate("Array.from(window.scarViewer.nv.scene.crosshairPos)")
    before = _canvas(page)
    for _ in range(4):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(150)
    page.wait_for_timeout(300)
    after_pos = page.evaluate("Array.from(window.scarViewer.nv.scene.crosshairPos)")
    after = _canvas(page)
    # the sagittal slice (left-right position) moved by whole slices; the other two stay
    # (within a voxel: NiiVue snaps the crosshair to voxel centres)
    assert after_pos[0] != pytest.approx(before_pos[0], abs=0.02), (before_pos, after_pos)
    assert after_pos[1:] == pytest.approx(before_pos[1:], abs=0.01)
    assert np.abs(after - before).sum(axis=2).astype(bool).mean() > 0.02  # another picture
    # NiiVue's keys step the crosshair too (l: one voxel right; the canvas has the focus)
    page.locator("#viewer").focus()
    page.keyboard.press("l")
    page.wait_for_timeout(300)
    assert page.evaluate("window.scarViewer.nv.scene.crosshairPos[0]") != \
        pytest.approx(after_pos[0], abs=1e-6)


@needs_browser
@pytest.mark.slow
def test_failed_case_shows_as_failed(server, page):
    page.goto(server + "/")
    page.click("a:text-is('broken_img')")
    page.wait_for_url("**/case/broken_img")
    assert page.locator(".status").first.inner_text() == "failed"
    assert "truncated gzip file" in page.locator("aside .error").inner_text()
    assert page.locator("#no-viewer").count() == 1 and page.locator("#viewer").count() == 0
    # the first flagged case: no earlier one; "next flagged" walks the flagged cases in the
    # index's order, and the last has no next
    flagged = _flagged_cases(server)
    assert flagged[0] == "broken_img" and page.locator("#prev-flagged").count() == 0
    for name in flagged[1:]:
        page.click("#next-flagged")
        page.wait_for_url(f"**/case/{name}")
    assert page.locator("#next-flagged").count() == 0


def _flagged_cases(server: str) -> list[str]:
    """The flagged cases of the index, in its order, read from its HTML."""
    html = raw_get(server, "/")[1].decode()
    return re.findall(r'<tr class="flagged"[^>]*><td data-v="([^"]*)"', html)

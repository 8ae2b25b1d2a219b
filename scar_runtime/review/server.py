"""``scar review OUT``: the standard library's threading HTTP server over one results folder.

Read-only by construction: only GET and HEAD exist, and every file answered is one of
- a packaged asset, by a fixed name (static_files.py);
- a file inside OUT whose real path (symlinks followed) stays inside OUT (safe_files.py);
- a case's recorded source image, only for a case of the folder and only if it is NIfTI
  (cases.ResultsFolder.source_image): scar infer writes no copy of the image.
Anything else is 404; a path that tries to climb out is 403. Bound to 127.0.0.1 unless told
otherwise; on a loopback address a request must also name the host as loopback (a web page
elsewhere cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from scar_runtime.core.errors import ConfigError, ScarError
from scar_runtime.review.case_page import case_page, image_route
from scar_runtime.review.cases import ResultsFolder
from scar_runtime.review.cohort_page import cohort_page
from scar_runtime.review.index_page import index_page
from scar_runtime.review.safe_files import Forbidden, decode_segments, inside
from scar_runtime.review.static_files import asset

BINARY = "application/octet-stream"
CONTENT_TYPES = {".json": "application/json", ".png": "image/png", ".csv": "text/csv",
                 ".gz": BINARY, ".nii": BINARY, ".dcm": "application/dicom"}


class _Answer(Exception):
    """An early HTTP answer (404, 403) from deep inside a route."""

    def __init__(self, status: HTTPStatus, why: str = ""):
        super().__init__(why)
        self.status = status


class ReviewHandler(BaseHTTPRequestHandler):
    server_version = "scar-review"
    folder: ResultsFolder  # set on the subclass made for one server
    allowed_hosts: frozenset[str] | None = None  # None: any Host header

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Quiet: the terminal shows the one line saying where the review is served."""

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        try:
            self._check_host()
            kind, payload = self._route(urlsplit(self.path).path)
        except _Answer as a:
            if a.status == HTTPStatus.NO_CONTENT:
                self._head(a.status, "text/plain", 0)
                return None
            return self._send_text(a.status, f"{a.status.value} {a.status.phrase}: {a}",
                                   send_body)
        except Forbidden as e:
            return self._send_text(HTTPStatus.FORBIDDEN, f"403 Forbidden: {e}", send_body)
        except ScarError as e:  # the folder's table became unreadable while serving
            return self._send_text(HTTPStatus.INTERNAL_SERVER_ERROR, str(e), send_body)
        if kind == "html":
            body = payload.encode("utf-8")
            self._head(HTTPStatus.OK, "text/html; charset=utf-8", len(body))
            if send_body:
                self.wfile.write(body)
        else:
            path, ctype = payload
            self._send_file(path, ctype, send_body)

    def _check_host(self) -> None:
        if self.allowed_hosts is None:
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in self.allowed_hosts:
            raise _Answer(HTTPStatus.FORBIDDEN, f"unexpected Host {host!r}")

    def _route(self, raw: str):
        """(kind, payload): ("html", text) or ("file", (path, content type))."""
        if raw == "/favicon.ico":  # browsers ask; an empty answer keeps their console clean
            raise _Answer(HTTPStatus.NO_CONTENT)
        if raw in ("/", "/index.html"):
            return "html", index_page(self.folder)
        if raw == "/cohort":
            return "html", cohort_page(self.folder, None)
        head, _, tail = raw.lstrip("/").partition("/")
        if not tail:
            raise _Answer(HTTPStatus.NOT_FOUND, "no such page")
        if head == "static":
            found = asset(tail)
            if found is None:
                raise _Answer(HTTPStatus.NOT_FOUND, "no such file")
            return "file", found
        if head == "files":  # any file of the folder, read-only
            path = inside(self.folder.root, decode_segments(tail))  # 403 when it leads out
            return "file", (self._exists(path), _content_type(path))
        if head in ("case", "cohort"):
            # a case is named only by matching a case of the table exactly (a manifest's case
            # name may hold a "/", sent as %2F); its files are then found from that name, each
            # through the same inside-OUT check, never from the request's text
            raw_case, _, rest = tail.partition("/")
            case = self.folder.case(unquote(raw_case, errors="replace"))
            if case is None:
                raise _Answer(HTTPStatus.NOT_FOUND, "no such case in this folder")
            if head == "cohort" and not rest:
                return "html", cohort_page(self.folder, case)
            if head == "case" and not rest:
                return "html", case_page(self.folder, case)
            if head == "case" and rest == "seg.nii.gz":
                return "file", (self._exists(self.folder.segmentation(case.name)), BINARY)
            route = image_route(self.folder, case)
            if head == "case" and route and rest == route.lstrip("/"):
                return "file", (self._exists(self.folder.source_image(case)), BINARY)
        raise _Answer(HTTPStatus.NOT_FOUND, "no such page")

    @staticmethod
    def _exists(path: Path | None) -> Path:
        if path is None:
            raise _Answer(HTTPStatus.NOT_FOUND, "no such file")
        return path

    def _head(self, status: HTTPStatus, ctype: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")  # a rerun's results show on reload
        self.end_headers()

    def _send_text(self, status: HTTPStatus, text: str, send_body: bool) -> None:
        body = (text + "\n").encode("utf-8")
        self._head(status, "text/plain; charset=utf-8", len(body))
        if send_body:
            self.wfile.write(body)

    def _send_file(self, path: Path, ctype: str, send_body: bool) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after the copy
        except OSError:
            return self._send_text(HTTPStatus.NOT_FOUND, "404 Not Found: unreadable", send_body)
        with f:
            size = path.stat().st_size
            self._head(HTTPStatus.OK, ctype, size)
            if send_body:
                shutil.copyfileobj(f, self.wfile)


def _content_type(path: Path | None) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), BINARY) if path else BINARY


def _loopback_names(host: str) -> frozenset[str] | None:
    """The Host header values accepted on a loopback address; None (any) on another one."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return None
    return frozenset({"127.0.0.1", "localhost", "::1", host.lower()})


def make_server(out: Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server over ``out``, bound and ready; raises a one-line ScarError for a folder with
    no results, a port in use or a host it cannot listen on."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is 0..65535 (0: any free port)")
    folder = ResultsFolder(out)
    folder.require_results()
    handler = type("BoundReviewHandler", (ReviewHandler,),
                   {"folder": folder, "allowed_hosts": _loopback_names(host)})
    server_cls = ThreadingHTTPServer
    if ":" in host:  # an IPv6 literal
        server_cls = type("ReviewServer6", (ThreadingHTTPServer,),
                          {"address_family": socket.AF_INET6})
    try:
        return server_cls((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?): choose "
                              "another with --port") from e
        if e.errno == errno.EACCES:
            raise ConfigError(f"not allowed to listen on port {port} (ports below 1024 need "
                              "root): choose another with --port") from e
        why = e.strerror or str(e)
        raise ConfigError(f"cannot listen on {host}:{port}: {why}") from e


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal, a service manager) stop the review like Ctrl-C:
    one line, exit 0. A signal the caller ignores (nohup) stays ignored."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, stop)


def serve(out: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until Ctrl-C; prints the address (with the port chosen for --port 0) first."""
    server = make_server(out, host, port)
    if threading.current_thread() is threading.main_thread():  # signals reach only that one
        _stop_on_signals()
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    n = len(server.RequestHandlerClass.folder.cases())
    print(f"scar review: {n} case(s) of {Path(out)} at http://{shown}:{bound_port}/ "
          "(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("scar review: stopped", file=sys.stderr, flush=True)
    finally:
        server.server_close()

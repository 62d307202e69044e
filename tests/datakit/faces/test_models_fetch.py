"""``datakit models`` / ``datakit models fetch`` against a local HTTP server serving ../shared/models."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from datakit.cli import main
from datakit.faces.model_fetch import ModelDownloadError, fetch_default_stack
from datakit.faces.model_files import (
    DEFAULT_STACK_FILES,
    PINNED_SHA256,
    ModelChecksumError,
    default_models_dir,
    resolve_models_dir,
    sha256_of,
    verified_model_files,
)


class _Server:
    """Serves files by name with HTTP Range support; ``drop_once`` names files cut off halfway once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.drop_once:
                    server.drop_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(models_dir):
    served = _Server({name: (models_dir / name).read_bytes() for name in DEFAULT_STACK_FILES})
    yield served
    served.close()


def _fetched_names(server: _Server) -> list[str]:
    return [name for name, _ in server.requests]


def test_fetch_fills_an_empty_folder_then_skips(server, tmp_path):
    target = tmp_path / "models"
    paths = fetch_default_stack(target, base_url=server.url, progress=False)
    assert sorted(p.name for p in paths) == sorted(DEFAULT_STACK_FILES)
    for name in DEFAULT_STACK_FILES:
        assert sha256_of(target / name) == PINNED_SHA256[name]
    assert set(verified_model_files(target, DEFAULT_STACK_FILES)) == set(DEFAULT_STACK_FILES)
    assert not list(target.glob("*.part"))
    num_requests = len(server.requests)
    assert fetch_default_stack(target, base_url=server.url, progress=False) == []
    assert len(server.requests) == num_requests  # nothing downloaded the second time


def test_corrupted_served_file_is_rejected_and_deleted(server, tmp_path):
    name = DEFAULT_STACK_FILES[1]
    data = bytearray(server.files[name])
    data[len(data) // 2] ^= 0xFF
    server.files[name] = bytes(data)
    target = tmp_path / "models"
    with pytest.raises(ModelChecksumError, match="sha256") as error:
        fetch_default_stack(target, base_url=server.url, progress=False)
    assert name in str(error.value) and "deleted" in str(error.value)
    assert not (target / name).exists() and not (target / f"{name}.part").exists()


def test_dropped_connection_fails_cleanly_and_the_retry_resumes(server, tmp_path):
    name = DEFAULT_STACK_FILES[0]
    server.drop_once.add(name)
    target = tmp_path / "models"
    with pytest.raises(ModelDownloadError, match="resume"):
        fetch_default_stack(target, base_url=server.url, progress=False)
    assert not (target / name).exists()
    part = target / f"{name}.part"
    assert 0 < part.stat().st_size < len(server.files[name])
    fetch_default_stack(target, base_url=server.url, progress=False)
    assert sha256_of(target / name) == PINNED_SHA256[name] and not part.exists()
    assert (name, f"bytes={len(server.files[name]) // 2}-") in server.requests  # resumed, not restarted


def test_unreachable_base_url_is_a_clear_error(tmp_path):
    # port 9 (discard) on localhost: nothing listens, the connection is refused at once
    with pytest.raises(ModelDownloadError) as error:
        fetch_default_stack(tmp_path / "models", base_url="http://127.0.0.1:9", progress=False)
    message = str(error.value)
    assert "http://127.0.0.1:9/face_detection_yunet_2023mar.onnx" in message
    assert "by hand" in message and "DATAKIT_MODELS_DIR" in message


def test_cli_fetch_then_list(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for backend in ("yunet:", "dlib:", "insightface:"):
        assert backend in listing
    assert f"{DEFAULT_STACK_FILES[0]}  [absent]" in listing and "opencv_zoo" in listing
    assert PINNED_SHA256[DEFAULT_STACK_FILES[2]] in listing and "[in package]" in listing
    assert main(["models", "fetch", "--base-url", server.url, "--quiet"]) == 0  # into the default folder
    assert "3 file(s) downloaded" in capsys.readouterr().out
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name}  [present]" in listing for name in DEFAULT_STACK_FILES)
    assert str(tmp_path / "cache" / "harmoview" / "models") in listing


def test_cli_fetch_offline_exits_1(tmp_path, capsys):
    assert main(["models", "fetch", "--to", str(tmp_path), "--base-url", "http://127.0.0.1:9", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "could not download" in err and "Traceback" not in err


def test_default_folder_is_the_user_cache(tmp_path, monkeypatch, models_dir):
    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "harmoview" / "models"
    assert default_models_dir() == cache and resolve_models_dir(None) == cache
    cache.mkdir(parents=True)
    for name in DEFAULT_STACK_FILES:
        (cache / name).write_bytes((models_dir / name).read_bytes())
    assert set(verified_model_files(resolve_models_dir(None), DEFAULT_STACK_FILES)) == set(DEFAULT_STACK_FILES)
    monkeypatch.setenv("DATAKIT_MODELS_DIR", str(tmp_path / "elsewhere"))  # the variable wins
    assert resolve_models_dir(None) == tmp_path / "elsewhere"
    assert resolve_models_dir(Path("given")) == Path("given")  # and the argument wins over both
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / ".cache" / "harmoview" / "models"


def test_a_build_after_fetch_uses_the_default_stack_from_the_user_folder(server, tmp_path, monkeypatch):
    """A user without ../shared: `datakit models fetch`, then `datakit build` with no models flag."""
    from tests.conftest import VIDEOS, build_in_subprocess

    monkeypatch.delenv("DATAKIT_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the build subprocess inherits it
    assert main(["models", "fetch", "--base-url", server.url, "--quiet"]) == 0
    assert set(verified_model_files(default_models_dir(), DEFAULT_STACK_FILES)) == set(DEFAULT_STACK_FILES)
    src = tmp_path / "src"
    src.mkdir()
    (src / "single_face.mp4").symlink_to(VIDEOS / "single_face.mp4")
    summary = build_in_subprocess(src=src, out=tmp_path / "run", workers=1)
    assert summary["face_stack"] == "yunet+fsanet+dlib" and summary["num_identities"] == 1

"""``datakit models`` / ``datakit models fetch`` against a local HTTP server serving ../shared/models."""

from __future__ import annotations

import json
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
from tests.datakit.faces.conftest import MODELS as MODELS_SHARED


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


# --- insightface packs: `datakit models fetch --pack NAME --accept-licence` ---------------------------------------

SC_INT8 = "insightface_sc_int8"
SC_INT8_FILES = ("det_500m.onnx", "w600k_mbf.onnx")


@pytest.fixture
def pack_server(models_dir):
    """Serves the real int8 pack as the registry lists it (``<pack>/<file>``), like a mirror of ../shared/models."""
    served = _Server({f"{SC_INT8}/{name}": (models_dir / SC_INT8 / name).read_bytes() for name in SC_INT8_FILES})
    yield served
    served.close()


def _zip_pack(models_dir: Path, nested: bool) -> bytes:
    """The real int8 pack as a release archive: flat like buffalo_l.zip, or in a folder like antelopev2.zip."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in SC_INT8_FILES:
            archive.writestr(f"zipped/{name}" if nested else name, (models_dir / SC_INT8 / name).read_bytes())
        archive.writestr("zipped/readme.txt" if nested else "readme.txt", "not a model: not unpacked")
    return buffer.getvalue()


def _archive_entry(name: str = "zipped", sha256: str | None = None):
    from datakit.faces.model_files import InsightFacePack, ModelFile

    archive = ModelFile(f"{name}.zip", "test archive", "test licence", f"https://example.invalid/{name}.zip", sha256)
    return InsightFacePack(name, "the int8 pack, zipped", (archive,), "test: none pinned")


def test_cli_pack_fetch_prints_the_licence_and_refuses_without_acceptance(pack_server, tmp_path, capsys):
    argv = ["models", "fetch", "--pack", SC_INT8, "--to", str(tmp_path), "--base-url", pack_server.url]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "non-commercial research" in out and "https://github.com/deepinsight/insightface#license" in out
    assert "--accept-licence" in err and "nothing was downloaded" in err and "Traceback" not in err
    assert pack_server.requests == [] and not (tmp_path / SC_INT8).exists()


def test_pack_fetch_verifies_records_and_skips_the_second_time(pack_server, tmp_path):
    from datakit.faces.model_fetch import fetch_insightface_pack
    from datakit.faces.model_files import PACK_MARKER, fetched_pack_status, find_fetched_pack, read_sha256sums

    pack_dir = fetch_insightface_pack(SC_INT8, tmp_path, base_url=pack_server.url, accept_licence=True, progress=False)
    assert pack_dir == tmp_path / SC_INT8 and find_fetched_pack(tmp_path) == pack_dir
    sums = read_sha256sums(MODELS_SHARED)
    for name in SC_INT8_FILES:
        assert sha256_of(pack_dir / name) == sums[f"{SC_INT8}/{name}"]  # the pinned hashes are the shared files'
    record = json.loads((pack_dir / PACK_MARKER).read_text())
    assert "non-commercial" in record["licence"] and record["licence_accepted_at"].endswith("Z")
    assert set(record["files"]) == set(SC_INT8_FILES) and not list(pack_dir.glob("*.part"))
    num_requests = len(pack_server.requests)
    fetch_insightface_pack(SC_INT8, tmp_path, base_url=pack_server.url, accept_licence=True, progress=False)
    assert len(pack_server.requests) == num_requests  # intact: nothing downloaded again
    data = bytearray((pack_dir / SC_INT8_FILES[1]).read_bytes())
    data[100] ^= 0xFF
    (pack_dir / SC_INT8_FILES[1]).write_bytes(bytes(data))
    assert fetched_pack_status(pack_dir).startswith("corrupt") and find_fetched_pack(tmp_path) is None


def test_pack_fetch_rejects_a_corrupt_file_and_marks_nothing(pack_server, tmp_path):
    from datakit.faces.model_fetch import fetch_insightface_pack
    from datakit.faces.model_files import PACK_MARKER, find_fetched_pack

    name = f"{SC_INT8}/{SC_INT8_FILES[1]}"
    data = bytearray(pack_server.files[name])
    data[len(data) // 2] ^= 0xFF
    pack_server.files[name] = bytes(data)
    with pytest.raises(ModelChecksumError, match="deleted"):
        fetch_insightface_pack(SC_INT8, tmp_path, base_url=pack_server.url, accept_licence=True, progress=False)
    pack_dir = tmp_path / SC_INT8
    assert not (pack_dir / SC_INT8_FILES[1]).exists() and not (pack_dir / f"{SC_INT8_FILES[1]}.part").exists()
    assert not (pack_dir / PACK_MARKER).exists() and find_fetched_pack(tmp_path) is None


def test_pack_fetch_resumes_after_a_dropped_connection(pack_server, tmp_path):
    from datakit.faces.model_fetch import fetch_insightface_pack
    from datakit.faces.model_files import fetched_pack_status

    name = f"{SC_INT8}/{SC_INT8_FILES[1]}"
    pack_server.drop_once.add(name)
    with pytest.raises(ModelDownloadError, match="resume"):
        fetch_insightface_pack(SC_INT8, tmp_path, base_url=pack_server.url, accept_licence=True, progress=False)
    assert fetched_pack_status(tmp_path / SC_INT8).startswith("incomplete")
    fetch_insightface_pack(SC_INT8, tmp_path, base_url=pack_server.url, accept_licence=True, progress=False)
    assert (name, f"bytes={len(pack_server.files[name]) // 2}-") in pack_server.requests  # resumed
    assert fetched_pack_status(tmp_path / SC_INT8) == "intact"


@pytest.mark.parametrize("nested", [False, True])
def test_archive_pack_is_verified_resumed_and_unpacked_flat(models_dir, tmp_path, nested):
    import hashlib

    from datakit.faces.model_fetch import fetch_insightface_pack
    from datakit.faces.model_files import fetched_pack_status

    data = _zip_pack(models_dir, nested)
    served = _Server({"zipped.zip": data})
    try:
        entry = _archive_entry()
        with pytest.raises(ModelChecksumError, match="none pinned"):  # no hash anywhere: refused before download
            fetch_insightface_pack(entry, tmp_path, base_url=served.url, accept_licence=True, progress=False)
        assert served.requests == []
        digest = hashlib.sha256(data).hexdigest()
        served.drop_once.add("zipped.zip")
        kwargs = {"base_url": served.url, "accept_licence": True, "sha256": digest, "progress": False}
        with pytest.raises(ModelDownloadError):
            fetch_insightface_pack(entry, tmp_path, **kwargs)
        pack_dir = fetch_insightface_pack(entry, tmp_path, **kwargs)
        assert ("zipped.zip", f"bytes={len(data) // 2}-") in served.requests  # resumed, not restarted
    finally:
        served.close()
    assert sorted(p.name for p in pack_dir.glob("*.onnx")) == sorted(SC_INT8_FILES)  # flat, .onnx only
    assert not (pack_dir / "readme.txt").exists() and not (tmp_path / "zipped.zip").exists()
    assert fetched_pack_status(pack_dir) == "intact"
    assert sha256_of(pack_dir / "w600k_mbf.onnx") == sha256_of(models_dir / SC_INT8 / "w600k_mbf.onnx")


def test_archive_with_the_wrong_hash_is_deleted_and_a_users_folder_is_never_overwritten(models_dir, tmp_path):
    from datakit.faces.model_fetch import fetch_insightface_pack

    served = _Server({"zipped.zip": _zip_pack(models_dir, nested=False)})
    try:
        kwargs = {"base_url": served.url, "accept_licence": True, "progress": False}
        with pytest.raises(ValueError, match="64 hex"):
            fetch_insightface_pack(_archive_entry(), tmp_path, sha256="not-a-hash", **kwargs)
        with pytest.raises(ModelChecksumError, match="deleted"):
            fetch_insightface_pack(_archive_entry(), tmp_path, sha256="0" * 64, **kwargs)
        assert not (tmp_path / "zipped.zip").exists() and not (tmp_path / "zipped.zip.part").exists()
        (tmp_path / "zipped").mkdir()
        (tmp_path / "zipped" / "mine.onnx").write_bytes(b"the user's own model")
        with pytest.raises(ModelDownloadError, match="not fetched by datakit"):
            fetch_insightface_pack(_archive_entry(), tmp_path, sha256="0" * 64, **kwargs)
        assert (tmp_path / "zipped" / "mine.onnx").read_bytes() == b"the user's own model"
    finally:
        served.close()
    (tmp_path / SC_INT8).mkdir()
    (tmp_path / SC_INT8 / "w600k_mbf.onnx").write_bytes(b"another recognition model")  # same name, not ours
    with pytest.raises(ModelDownloadError, match="not fetched by datakit"):
        fetch_insightface_pack(SC_INT8, tmp_path, base_url="http://127.0.0.1:9", accept_licence=True, progress=False)
    assert (tmp_path / SC_INT8 / "w600k_mbf.onnx").read_bytes() == b"another recognition model"


def test_unpinned_registry_packs_say_so_and_name_the_licence():
    from datakit.faces.model_fetch import licence_notice
    from datakit.faces.model_files import INSIGHTFACE_PACKS, insightface_pack

    assert [p.name for p in INSIGHTFACE_PACKS][:2] == ["buffalo_l", "antelopev2"]
    for name in ("buffalo_l", "antelopev2"):
        pack = insightface_pack(name)
        assert pack.is_archive and pack.downloads[0].sha256 is None and "--sha256" in pack.checksum_source
        assert pack.downloads[0].url.startswith("https://github.com/deepinsight/insightface/releases/")
        assert "non-commercial research" in licence_notice(pack)
    assert all(m.sha256 and m.size_bytes for m in insightface_pack(SC_INT8).downloads)
    with pytest.raises(ValueError, match="known"):
        insightface_pack("buffalo_xl")


def test_cli_pack_fetch_then_list_then_auto_takes_it(pack_server, tmp_path, monkeypatch, capsys):
    """`datakit models fetch --pack ... --accept-licence`, then `--backend auto` picks the fetched pack."""
    pytest.importorskip("insightface")
    from datakit.faces import build_face_stack, choose_auto_backend

    monkeypatch.delenv("DATAKIT_INSIGHTFACE_PACK", raising=False)
    folder = tmp_path / "models"
    argv = ["models", "fetch", "--pack", SC_INT8, "--accept-licence", "--to", str(folder), "--quiet"]
    assert main([*argv, "--base-url", pack_server.url]) == 0
    out = capsys.readouterr().out
    assert "non-commercial research" in out and f"ready in {folder / SC_INT8}" in out
    assert main(["models", "--models-dir", str(folder)]) == 0
    assert f"{SC_INT8}  [intact]" in capsys.readouterr().out
    choice = choose_auto_backend(folder)
    assert choice.backend == "insightface" and choice.insightface_pack == folder / SC_INT8
    assert "datakit models fetch --pack" in choice.reason
    stack = build_face_stack("auto", models_dir=folder)
    assert stack.name.startswith(f"insightface:{SC_INT8}") and stack.embedder.same_person_cosine == 0.36
    assert "auto took insightface" in stack.notes[0]

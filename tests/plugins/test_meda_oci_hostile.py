"""The oci plugin against a hostile registry: content is data, sizes are caps, one deadline
bounds a transfer, and credentials stay with their registry."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import zstandard

from meda_core.errors import BackendError
from meda_core.facade import Meda
from meda_core.inputs.references import parse_reference
from meda_core.settings import Settings
from meda_oci import formats
from meda_oci.client import OCI_MANIFEST, RegistryClient, sha256_digest
from tests.plugins.conftest import HostileRegistry, trickle

MiB = 1024 * 1024
Start = Callable[[], HostileRegistry]
RUST_DISK = "application/vnd.cirunlabs.meda.base-image.v1"


@pytest.fixture(autouse=True)
def no_host_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing from the machine's docker config or environment takes part."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for name in ("HOST", "USERNAME", "PASSWORD", "TOKEN", "TOKEN_REALMS"):
        monkeypatch.delenv(f"MEDA_REGISTRY_{name}", raising=False)
    monkeypatch.setenv("MEDA_OCI_CONCURRENCY", "1")


@pytest.fixture
def meda(tmp_path: Path) -> Meda:
    return Meda(Settings(home=tmp_path / "home"))


def ref(registry: HostileRegistry, tag: str = "v1") -> str:
    return f"{registry.address}/meda/evil:{tag}"


def meda_image(
    registry: HostileRegistry,
    disk: bytes = b"",
    kernel: bytes | None = None,
    chunk_size: int = MiB,
    tag: str = "v1",
) -> dict[str, Any]:
    """Serve a well-formed meda image under ``tag``; its manifest, for tests to spoil."""
    layers = []
    for index, start in enumerate(range(0, len(disk), chunk_size)):
        data = disk[start : start + chunk_size]
        packed = zstandard.ZstdCompressor().compress(data)
        chunk = formats.Chunk(
            index, start, len(data), sha256_digest(data), registry.blob(packed), len(packed)
        )
        layers.append(formats.chunk_layer(chunk))
    if kernel is not None:
        layers.append(formats.descriptor(formats.KERNEL_TYPE, registry.blob(kernel), len(kernel)))
    meta = {"format": "raw", "size": len(disk), "chunk_size": chunk_size, "zero_chunks": []}
    config = json.dumps({"disk": meta if disk else None, "cmdline": None}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": formats.ARTIFACT_TYPE,
        "config": formats.descriptor(formats.CONFIG_TYPE, registry.blob(config), len(config)),
        "layers": layers,
    }
    registry.manifest(manifest, tag=tag)
    return manifest


def pulled_nothing(meda: Meda) -> bool:
    blobs = meda.settings.home / "blobs" / "sha256"
    return meda.images.list() == [] and not (blobs.exists() and any(blobs.iterdir()))


def assert_refused(
    meda: Meda, registry: HostileRegistry, manifest: dict[str, Any], message: str
) -> None:
    """The registry serves ``manifest``: the pull fails saying ``message`` and keeps nothing."""
    registry.manifest(manifest)
    with pytest.raises(BackendError, match=message):
        meda.images.pull(ref(registry))
    assert pulled_nothing(meda)


def test_a_well_formed_image_from_the_test_registry_pulls(meda: Meda, hostile: Start) -> None:
    registry = hostile()
    disk = os.urandom(MiB) + bytes(MiB) + os.urandom(MiB // 2)
    meda_image(registry, disk, kernel=b"kernel")
    image = meda.images.pull(ref(registry))
    assert image.disk is not None and image.disk.read_bytes() == disk
    assert image.kernel is not None and image.kernel.read_bytes() == b"kernel"


# ---- content is data, never a path ----


def test_a_layer_digest_naming_a_host_file_never_brings_that_file_in(
    meda: Meda, hostile: Start, tmp_path: Path
) -> None:
    """``sha256:../../…/secret``: once a host file taken for a downloaded layer."""
    registry = hostile()
    secret = tmp_path / "secret"
    secret.write_bytes(b"root-only secret\n" * 100)
    digest = "sha256:" + "../" * 30 + str(secret).lstrip("/")
    empty = b"{}"
    registry.manifest(
        {
            "schemaVersion": 2,
            "artifactType": formats.RUST_ARTIFACT_TYPE,
            "config": formats.descriptor(
                "application/vnd.oci.empty.v1+json", registry.blob(empty), 2
            ),
            "layers": [
                formats.descriptor(
                    RUST_DISK, digest, secret.stat().st_size, **{formats.TITLE: "base.raw"}
                )
            ],
        }
    )
    with pytest.raises(BackendError, match="invalid layer digest"):
        meda.images.pull(ref(registry))
    assert pulled_nothing(meda)
    assert not [s for s in registry.seen if "blobs/sha256:." in s.path]  # not even asked


def _spoil_config(manifest: dict[str, Any]) -> None:
    manifest["config"]["digest"] = "sha256:../../../../etc/passwd"


def _spoil_layer(manifest: dict[str, Any]) -> None:
    manifest["layers"][-1]["digest"] = "sha256:" + "A" * 64


def _spoil_chunk_blob(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["digest"] = "sha256:/etc/shadow"


def _spoil_chunk_annotation(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["annotations"][formats.CHUNK_DIGEST] = "md5:../x"


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_spoil_config, "invalid config digest"),
        (_spoil_layer, "invalid layer digest"),
        (_spoil_chunk_blob, "invalid layer digest"),
        (_spoil_chunk_annotation, "invalid chunk digest"),
    ],
)
def test_a_digest_that_is_not_sha256_hex_is_refused_where_the_manifest_is_read(
    meda: Meda, hostile: Start, spoil: Callable[[dict[str, Any]], None], message: str
) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB), kernel=b"kernel")
    spoil(manifest)
    assert_refused(meda, registry, manifest, message)
    layers = [la["digest"] for la in manifest["layers"]]
    assert not [s for s in registry.seen if any(d in s.path for d in layers)]  # none fetched


def test_files_left_where_a_blob_goes_are_verified_not_believed(
    hostile: Start, tmp_path: Path
) -> None:
    registry = hostile()
    data = os.urandom(4096)
    digest = registry.blob(data)
    client = RegistryClient(parse_reference(ref(registry)))
    dest, partial = tmp_path / "blob", tmp_path / "blob.partial"
    for planted, where in ((b"planted", dest), (os.urandom(8192), partial)):
        dest.unlink(missing_ok=True)
        where.write_bytes(planted)
        assert client.download(digest, len(data), dest, lambda n: None).read_bytes() == data
        assert not partial.exists()
    dest.unlink()
    partial.write_bytes(b"x" * 99)  # resumed with a range: the whole is hashed again
    with pytest.raises(BackendError, match="failed verification"):
        client.download(digest, len(data), dest, lambda n: None)
    assert not partial.exists() and not dest.exists()
    assert client.download(digest, len(data), dest, lambda n: None).read_bytes() == data


def test_a_whole_partial_file_is_verified_and_kept_without_asking_for_a_range(
    hostile: Start, tmp_path: Path
) -> None:
    registry = hostile()
    data = os.urandom(4096)
    digest = registry.blob(data)
    client = RegistryClient(parse_reference(ref(registry)))
    dest, partial = tmp_path / "blob", tmp_path / "blob.partial"
    partial.write_bytes(data)  # a pull killed between its last byte and the rename
    assert client.download(digest, len(data), dest, lambda n: None).read_bytes() == data
    assert not [s for s in registry.seen if digest in s.path]  # no range past the end (416)
    dest.unlink()
    partial.write_bytes(os.urandom(4096))  # whole but not the blob: fetched again
    assert client.download(digest, len(data), dest, lambda n: None).read_bytes() == data
    assert not partial.exists()


def test_a_manifest_that_is_not_the_pulled_digest_is_refused(meda: Meda, hostile: Start) -> None:
    registry = hostile()
    meda_image(registry, os.urandom(MiB))
    other = "sha256:" + "0" * 64
    raw = registry.routes[("GET", "/v2/meda/evil/manifests/v1")]
    registry.route("GET", f"/v2/meda/evil/manifests/{other}", raw)  # serves another manifest
    with pytest.raises(BackendError, match="is not the requested"):
        meda.images.pull(f"{registry.address}/meda/evil@{other}")
    assert pulled_nothing(meda)


# ---- sizes are caps ----


def test_a_blob_longer_than_its_descriptor_is_cut_off_and_refused(
    meda: Meda, hostile: Start
) -> None:
    registry = hostile()
    manifest = meda_image(registry, kernel=b"k" * 1024)
    kernel = manifest["layers"][-1]
    endless = (b"\0" * MiB for _ in range(256))  # 256 MiB where 1 KiB was declared
    registry.reply("GET", f"/v2/meda/evil/blobs/{kernel['digest']}", endless, length=256 * MiB)
    with pytest.raises(BackendError, match="longer than the 1024 bytes"):
        meda.images.pull(ref(registry))
    assert pulled_nothing(meda)
    assert registry.sent < 64 * MiB  # meda hung up; it did not read the rest
    assert not list((meda.settings.home / "pulls").rglob("*.partial"))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda m: m["layers"][-1].update(size=2**50), "invalid layer size"),
        (lambda m: m["layers"][-1].update(size="12"), "invalid layer size"),
        (lambda m: m["config"].update(size=64 * MiB), "invalid config size"),
        (
            lambda m: m["layers"][0]["annotations"].update({formats.CHUNK_SIZE: str(2 * MiB)}),
            "invalid disk chunk 0",
        ),
        (
            lambda m: m["layers"][0]["annotations"].update({formats.CHUNK_INDEX: "-1"}),
            "invalid chunk index",
        ),
    ],
)
def test_sizes_a_manifest_declares_are_bounded(
    meda: Meda, hostile: Start, spoil: Callable[[dict[str, Any]], None], message: str
) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB), kernel=b"kernel")
    spoil(manifest)
    assert_refused(meda, registry, manifest, message)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"chunk_size": 2**40}, "invalid chunk size"),
        ({"chunk_size": 1}, "invalid chunk size"),
        ({"size": 2**62}, "invalid disk size"),
        ({"format": "../../x"}, "invalid disk format"),
    ],
)
def test_the_disk_a_config_describes_is_bounded(
    meda: Meda, hostile: Start, meta: dict[str, Any], message: str
) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB))
    config = {
        "disk": {"format": "raw", "size": MiB, "chunk_size": MiB, "zero_chunks": [], **meta},
        "cmdline": None,
    }
    raw = json.dumps(config).encode()
    manifest["config"] = formats.descriptor(formats.CONFIG_TYPE, registry.blob(raw), len(raw))
    assert_refused(meda, registry, manifest, message)


def config_with_ready_port(port: Any) -> bytes:
    disk = {"format": "raw", "size": MiB, "chunk_size": MiB, "zero_chunks": []}
    return json.dumps({"disk": disk, "cmdline": None, "ready_port": port}).encode()


@pytest.mark.parametrize(
    "port", [0, -1, 65536, "22", 22.0, True, [22], {"port": 22}, "../../etc/passwd"]
)
def test_a_ready_port_that_is_not_a_port_is_refused_before_any_layer(
    meda: Meda, hostile: Start, port: Any
) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB))
    raw = config_with_ready_port(port)
    manifest["config"] = formats.descriptor(formats.CONFIG_TYPE, registry.blob(raw), len(raw))
    assert_refused(meda, registry, manifest, "invalid ready port")
    chunks = {f"/v2/meda/evil/blobs/{layer['digest']}" for layer in manifest["layers"]}
    assert not chunks & {seen.path for seen in registry.seen}  # refused before the disk


def test_a_ready_port_from_the_registry_is_kept(meda: Meda, hostile: Start) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB))
    raw = config_with_ready_port(2222)
    manifest["config"] = formats.descriptor(formats.CONFIG_TYPE, registry.blob(raw), len(raw))
    registry.manifest(manifest)
    assert meda.images.pull(ref(registry)).ready_port == 2222
    assert meda.images.pull(ref(registry), ready_port=0).ready_port is None  # the operator's say


def test_a_rust_base_image_is_bounded_by_the_largest_disk(
    meda: Meda, hostile: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDA_OCI_MAX_DISK_SIZE", str(MiB))
    registry = hostile()
    parts = [os.urandom(MiB // 2 + 1) for _ in range(2)]
    empty = b"{}"
    registry.manifest(
        {
            "schemaVersion": 2,
            "artifactType": formats.RUST_ARTIFACT_TYPE,
            "config": formats.descriptor(
                "application/vnd.oci.empty.v1+json", registry.blob(empty), 2
            ),
            "layers": [
                formats.descriptor(
                    RUST_DISK.replace("image", "image-chunk"),
                    registry.blob(part),
                    len(part),
                    **{formats.TITLE: f"base.raw.chunk.{i:03d}"},
                )
                for i, part in enumerate(parts)
            ],
        }
    )
    with pytest.raises(BackendError, match="invalid base image size"):
        meda.images.pull(ref(registry))
    assert pulled_nothing(meda)


def test_a_manifest_over_4_mib_is_refused(meda: Meda, hostile: Start) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB))
    manifest["annotations"] = {"padding": "x" * (5 * MiB)}
    registry.manifest(manifest)
    with pytest.raises(BackendError, match="over 4194304 bytes"):
        meda.images.pull(ref(registry))
    assert pulled_nothing(meda)


def test_an_error_body_is_not_read_whole(meda: Meda, hostile: Start) -> None:
    registry = hostile()
    manifest = meda_image(registry, kernel=b"kernel")
    kernel = manifest["layers"][-1]
    huge = (b"e" * MiB for _ in range(512))
    registry.reply(
        "GET", f"/v2/meda/evil/blobs/{kernel['digest']}", huge, status=400, length=512 * MiB
    )
    with pytest.raises(BackendError, match="registry answered 400: eee") as refused:
        meda.images.pull(ref(registry))
    assert len(refused.value.message) < 1000
    assert registry.sent < 64 * MiB


def _bomb(declared: int) -> bytes:
    """A small zstd frame that declares, and unpacks to, ``declared`` zero bytes."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, size=declared, closefd=False) as w:
        for _ in range(declared // MiB):
            w.write(bytes(MiB))
    return out.getvalue()


PEAK = """
import re, sys
from pathlib import Path
from meda_core.facade import Meda
from meda_core.settings import Settings
try:
    Meda(Settings(home=sys.argv[1])).images.pull(sys.argv[2])
    print("pulled")
except Exception as exc:
    print(type(exc).__name__, exc)
status = Path("/proc/self/status").read_text()
print("peak", int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024)
"""


def peak_pull(reference: str, home: Path) -> tuple[str, int]:
    """Pull ``reference`` in a fresh process; its outcome and peak resident memory (VmHWM:
    ru_maxrss would count the parent's memory at the fork)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(home), reference],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    outcome, peak = done.stdout.strip().rsplit("\n", 1)
    return outcome, int(peak.split()[1])


def test_a_decompression_bomb_stops_at_the_declared_size_in_little_memory(
    hostile: Start, tmp_path: Path
) -> None:
    registry = hostile()
    manifest = meda_image(registry, os.urandom(MiB))
    bomb = _bomb(1024 * MiB)  # a few hundred KiB that say, and give, 1 GiB
    assert len(bomb) < MiB
    chunk = manifest["layers"][0]
    chunk.update(digest=registry.blob(bomb), size=len(bomb))
    registry.manifest(manifest)
    outcome, peak = peak_pull(ref(registry), tmp_path / "home")
    assert "unpacks past its declared 1048576 bytes" in outcome
    assert peak < 200 * MiB, f"peak {peak // MiB} MiB"


def test_a_pulls_memory_does_not_grow_with_blob_size(hostile: Start, tmp_path: Path) -> None:
    registry = hostile()
    meda_image(registry, os.urandom(MiB), chunk_size=MiB, tag="small")
    meda_image(registry, os.urandom(96 * MiB), chunk_size=96 * MiB, tag="large")
    small = peak_pull(ref(registry, "small"), tmp_path / "small")
    large = peak_pull(ref(registry, "large"), tmp_path / "large")
    assert small[0] == large[0] == "pulled"
    assert large[1] - small[1] < 24 * MiB, f"{small[1] // MiB} MiB, then {large[1] // MiB} MiB"


# ---- one deadline per transfer ----


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("MEDA_OCI_DEADLINE", "2")
    return 2.0


def test_a_trickling_blob_cannot_extend_the_deadline(
    meda: Meda, hostile: Start, short_deadline: float
) -> None:
    registry = hostile()
    manifest = meda_image(registry, kernel=b"k" * 200)
    kernel = manifest["layers"][-1]
    registry.reply(
        "GET", f"/v2/meda/evil/blobs/{kernel['digest']}", trickle(b"k" * 200, 0.1), length=200
    )  # 20 s in all, a byte every 0.1 s
    started = time.monotonic()
    with pytest.raises(BackendError, match="MEDA_OCI_DEADLINE"):
        meda.images.pull(ref(registry))
    assert time.monotonic() - started < short_deadline + 3
    assert pulled_nothing(meda)


def test_trickling_headers_cannot_extend_the_deadline(
    meda: Meda, hostile: Start, short_deadline: float
) -> None:
    registry = hostile()
    meda_image(registry, kernel=b"kernel")

    def drip(request: BaseHTTPRequestHandler) -> None:
        request.wfile.write(b"HTTP/1.1 200 OK\r\n")
        registry.write(request, trickle(b"X-Slow: " + b"s" * 200 + b"\r\n\r\n", 0.1))

    registry.route("GET", "/v2/meda/evil/manifests/v1", drip)
    started = time.monotonic()
    with pytest.raises(BackendError, match="MEDA_OCI_DEADLINE"):
        meda.images.pull(ref(registry))
    assert time.monotonic() - started < short_deadline + 3


def test_a_registry_that_never_answers_an_upload_cannot_hold_a_push(
    meda: Meda, hostile: Start, short_deadline: float, tmp_path: Path
) -> None:
    registry = hostile()
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(4096))
    meda.images.import_files("local", kernel=kernel)
    registry.reply(
        "POST",
        "/v2/meda/evil/blobs/uploads/",
        status=202,
        headers={"Location": "/v2/meda/evil/blobs/uploads/1"},
    )

    def silent(request: BaseHTTPRequestHandler) -> None:
        request.rfile.read(int(request.headers["Content-Length"]))
        registry.stop.wait(20)  # then the test is over; an answer would come too late
        request.close_connection = True

    registry.route("PUT", "/v2/meda/evil/blobs/uploads/1", silent)
    started = time.monotonic()
    with pytest.raises(BackendError, match="MEDA_OCI_DEADLINE"):
        meda.images.push("local", ref(registry))
    assert time.monotonic() - started < short_deadline + 3


# ---- credentials stay with their registry ----


def _basic(user: str = "alice", password: str = "s3cret") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def wants_basic(registry: HostileRegistry) -> None:
    """The registry asks for Basic credentials on ``/v2/`` (and takes any)."""
    registry.reply("GET", "/v2/", status=401, headers={"Www-Authenticate": 'Basic realm="r"'})


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def set_for(host: str) -> None:
        monkeypatch.setenv("MEDA_REGISTRY_HOST", host)
        monkeypatch.setenv("MEDA_REGISTRY_USERNAME", "alice")
        monkeypatch.setenv("MEDA_REGISTRY_PASSWORD", "s3cret")

    return set_for


def test_environment_credentials_go_only_to_the_registry_they_name(
    meda: Meda, hostile: Start, credentials: Callable[[str], None]
) -> None:
    registry = hostile()
    wants_basic(registry)
    meda_image(registry, kernel=b"kernel")
    credentials("registry.example")  # the operator's own registry, not this one
    with pytest.raises(BackendError, match="requires a login"):
        meda.images.pull(ref(registry))
    assert registry.authorizations() == []
    credentials(registry.address)
    meda.images.pull(ref(registry))
    assert set(registry.authorizations()) == {_basic()}


def test_an_upload_location_on_another_host_gets_no_credentials(
    meda: Meda, hostile: Start, credentials: Callable[[str], None], tmp_path: Path
) -> None:
    registry, elsewhere = hostile(), hostile()
    wants_basic(registry)
    credentials(registry.address)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(4096))
    meda.images.import_files("local", kernel=kernel)
    port = elsewhere.address.rsplit(":", 1)[1]
    registry.reply(
        "POST",
        "/v2/meda/evil/blobs/uploads/",
        status=202,
        headers={"Location": f"http://localhost:{port}/upload"},
    )
    elsewhere.reply("PUT", "/upload", status=201)
    registry.reply("PUT", "/v2/meda/evil/manifests/v1", status=201)
    meda.images.push("local", ref(registry))
    assert [s.method for s in elsewhere.seen] == ["PUT", "PUT"]  # kernel and config
    assert elsewhere.authorizations() == []
    assert _basic() in registry.authorizations()


def test_a_redirect_to_another_host_gets_no_credentials(
    meda: Meda, hostile: Start, credentials: Callable[[str], None]
) -> None:
    registry, elsewhere = hostile(), hostile()
    wants_basic(registry)
    credentials(registry.address)
    manifest = meda_image(registry, kernel=b"kernel")
    kernel = manifest["layers"][-1]["digest"]
    port = elsewhere.address.rsplit(":", 1)[1]
    registry.reply(
        "GET",
        f"/v2/meda/evil/blobs/{kernel}",
        status=307,
        headers={"Location": f"http://localhost:{port}/cdn/kernel"},
    )
    elsewhere.reply("GET", "/cdn/kernel", b"kernel")
    image = meda.images.pull(ref(registry))
    assert image.kernel is not None and image.kernel.read_bytes() == b"kernel"
    assert [s.path for s in elsewhere.seen] == ["/cdn/kernel"]
    assert elsewhere.authorizations() == []


def _wants_bearer(registry: HostileRegistry, realm: str) -> None:
    """Every registry route answers 401 with a Bearer challenge unless the token is right."""
    challenge = {"Www-Authenticate": f'Bearer realm="{realm}",service="evil",scope="pull"'}
    for key, handler in [*registry.routes.items(), (("GET", "/v2/"), None)]:

        def guarded(request: BaseHTTPRequestHandler, handler: Any = handler) -> None:
            if request.headers.get("Authorization") != "Bearer good" or handler is None:
                request.send_response(401)
                for name, value in challenge.items():
                    request.send_header(name, value)
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            handler(request)

        registry.route(*key, guarded)


# The second realm is one that URL parsers read two ways: Python's sees the registry, the
# HTTP library connects to the other host.
@pytest.mark.parametrize(
    "realm_url", ["http://localhost:{port}/token", "http://localhost:{port}\\@{registry}/token"]
)
def test_a_token_realm_on_another_host_is_never_contacted(
    meda: Meda, hostile: Start, credentials: Callable[[str], None], realm_url: str
) -> None:
    registry, realm = hostile(), hostile()
    meda_image(registry, kernel=b"kernel")
    port = realm.address.rsplit(":", 1)[1]
    _wants_bearer(registry, realm_url.format(port=port, registry=registry.address))
    realm.reply("GET", "/token", json.dumps({"token": "good"}).encode())
    credentials(registry.address)
    with pytest.raises(BackendError, match=r"not its own host.*MEDA_REGISTRY_TOKEN_REALMS"):
        meda.images.pull(ref(registry))
    assert realm.seen == []
    assert pulled_nothing(meda)


def test_a_token_realm_the_operator_allows_gets_the_credentials(
    meda: Meda,
    hostile: Start,
    credentials: Callable[[str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, realm = hostile(), hostile()
    meda_image(registry, kernel=b"kernel")
    port = realm.address.rsplit(":", 1)[1]
    _wants_bearer(registry, f"http://localhost:{port}/token")
    realm.reply("GET", "/token", json.dumps({"token": "good"}).encode())
    credentials(registry.address)
    monkeypatch.setenv("MEDA_REGISTRY_TOKEN_REALMS", "auth.docker.io, localhost")
    assert meda.images.pull(ref(registry)).kernel is not None
    assert set(realm.authorizations()) == {_basic()}
    assert "service=evil" in realm.seen[0].path and "scope=pull" in realm.seen[0].path
    assert "Bearer good" in registry.authorizations()


def test_an_oversized_token_answer_is_refused(
    meda: Meda, hostile: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = hostile()
    meda_image(registry, kernel=b"kernel")
    _wants_bearer(registry, registry.url("/token"))
    huge = json.dumps({"token": "good", "padding": "x" * (8 * MiB)}).encode()
    registry.reply("GET", "/token", huge)
    with pytest.raises(BackendError, match=r"token response .* is over"):
        meda.images.pull(ref(registry))


def test_a_redirect_that_urls_read_two_ways_is_not_followed(
    meda: Meda, hostile: Start, credentials: Callable[[str], None]
) -> None:
    """``http://elsewhere\\@registry/``: Python's URL parser sees the registry, the HTTP
    library connects to elsewhere; meda's credentials must not go along."""
    registry, elsewhere = hostile(), hostile()
    wants_basic(registry)
    credentials(registry.address)
    manifest = meda_image(registry, kernel=b"kernel")
    kernel = manifest["layers"][-1]["digest"]
    port = elsewhere.address.rsplit(":", 1)[1]
    two_ways = f"http://localhost:{port}\\@{registry.address}/k"
    registry.reply(
        "GET", f"/v2/meda/evil/blobs/{kernel}", status=307, headers={"Location": two_ways}
    )
    with pytest.raises(BackendError, match="does not follow"):
        meda.images.pull(ref(registry))
    assert elsewhere.seen == []
    assert pulled_nothing(meda)


def test_oras_environment_credentials_go_nowhere(
    meda: Meda, hostile: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """oras-py's own ORAS_USER/ORAS_PASS would go to every registry; meda ignores them."""
    monkeypatch.setenv("ORAS_USER", "ci-bot")
    monkeypatch.setenv("ORAS_PASS", "oras-secret")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    registry = hostile()
    wants_basic(registry)
    meda_image(registry, kernel=b"kernel")
    with pytest.raises(BackendError, match="requires a login"):
        meda.images.pull(ref(registry))
    assert registry.authorizations() == []


def test_what_a_redirect_target_answers_is_not_repeated(meda: Meda, hostile: Start) -> None:
    """A registry redirecting meda to an internal page learns nothing of that page."""
    registry, internal = hostile(), hostile()
    port = internal.address.rsplit(":", 1)[1]
    registry.reply(
        "HEAD",
        "/v2/meda/evil/manifests/v1",
        headers={"Docker-Content-Digest": "sha256:" + "0" * 64},
    )
    registry.reply(
        "GET",
        "/v2/meda/evil/manifests/v1",
        status=302,
        headers={"Location": f"http://localhost:{port}/admin"},
    )
    internal.reply("GET", "/admin", b"INTERNAL-ONLY: db_password=swordfish", status=500)
    with pytest.raises(BackendError) as refused:
        meda.images.pull(ref(registry))
    assert "swordfish" not in refused.value.message and "500" in refused.value.message

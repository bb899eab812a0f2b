"""An oras-py registry client that streams, verifies, resumes and stays quiet.

oras-py 0.2.x reads a whole blob into memory for a single-PUT upload, does not check
digests on download, cannot resume and prints on push. These subclass methods are the
versions meda uses instead; everything else (auth, retries, URLs) is oras-py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import oras.container
import oras.provider
import requests
from oras.auth.basic import BasicAuth

from meda_core.errors import BackendError, NotFound
from meda_core.references import Reference
from meda_oci.settings import Credentials

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT_MANIFESTS = [OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"]
_READ = 1024 * 1024
RETRIES = 3
Advance = Callable[[int], None]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient(oras.provider.Registry):  # type: ignore[misc]
    """One registry, one repository: the calls meda's oci backend needs."""

    def __init__(self, ref: Reference) -> None:
        credentials = Credentials()
        challenge = _challenge(ref)
        super().__init__(
            hostname=ref.registry,
            insecure=ref.insecure,
            auth_backend="basic" if challenge.lower().startswith("basic") else "token",
        )
        self.ref = ref
        self.container = oras.container.Container(
            f"{ref.registry}/{ref.repository}:{ref.tag}", registry=ref.registry
        )
        if credentials.token is not None:
            self.auth.set_token_auth(credentials.token.get_secret_value())
        elif credentials.username and credentials.password is not None:
            self.auth.set_basic_auth(credentials.username, credentials.password.get_secret_value())
        else:  # docker's config and its credential helpers
            config = docker_config()
            self.auth.load_configs(self.container, [str(config)] if config.exists() else [])
        self._needs_login = challenge.lower().startswith("basic") and not (
            hasattr(self.auth, "_basic_auth") or credentials.token is not None
        )

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request with auth, retried briefly on connection errors and 5xx only.

        (oras-py's own retries every error, authentication failures included, for minutes.)
        """
        if self._needs_login:
            raise BackendError(
                f"registry {self.ref.registry} requires a login: set MEDA_REGISTRY_USERNAME "
                "and MEDA_REGISTRY_PASSWORD, or log in with docker",
                registry=self.ref.registry,
            )
        headers = dict(headers or {})
        if getattr(self.auth, "_basic_auth", None) and isinstance(self.auth, BasicAuth):
            headers.update(self.auth.get_auth_header())
        elif getattr(self.auth, "token", None):
            headers["Authorization"] = f"Bearer {self.auth.token}"
        response = self._send(method, url, data, headers, json, stream)
        if response.status_code in (401, 403) and not isinstance(self.auth, BasicAuth):
            headers, changed = self.auth.authenticate_request(response, headers)
            if changed:
                response = self._send(method, url, data, headers, json, stream)
        if response.status_code in (401, 403):
            raise BackendError(
                f"registry {self.ref.registry} refused the credentials ({response.status_code})",
                registry=self.ref.registry,
            )
        return response

    def _send(
        self, method: str, url: str, data: Any, headers: dict[str, str],
        json: dict[str, Any] | None, stream: bool,
    ) -> requests.Response:  # fmt: skip
        for attempt in range(RETRIES):
            try:
                response: requests.Response = self.session.request(
                    method, url, data=data, json=json, headers=headers, stream=stream,
                    verify=self._tls_verify, timeout=(30, 300),
                )  # fmt: skip
            except requests.ConnectionError as exc:
                if attempt + 1 == RETRIES or not _rewindable(data):
                    raise BackendError(f"registry {self.ref.registry}: {exc}") from None
            else:
                if response.status_code < 500 or attempt + 1 == RETRIES or not _rewindable(data):
                    return response
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _url(self, path: str) -> str:
        return f"{self.prefix}://{self.ref.registry}/v2/{self.ref.repository}/{path}"

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code == 404:
            raise NotFound(f"{what}: not found in {self.ref.registry}", reference=str(self.ref))
        if response.status_code >= 400:
            raise BackendError(
                f"{what}: registry answered {response.status_code}: {response.text[:300]}",
                reference=str(self.ref),
            )
        return response

    # ---- manifests ----

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest's exact bytes and their digest."""
        headers = {"Accept": ", ".join(ACCEPT_MANIFESTS)}
        response = self._check(
            self.do_request(self._url(f"manifests/{reference}"), "GET", headers=headers),
            f"manifest {self.ref}",
        )
        return response.content, sha256_digest(response.content)

    def manifest_digest(self, reference: str) -> str | None:
        headers = {"Accept": ", ".join(ACCEPT_MANIFESTS)}
        response = self.do_request(self._url(f"manifests/{reference}"), "HEAD", headers=headers)
        if response.status_code == 404:
            return None
        self._check(response, f"manifest {self.ref}")
        digest = response.headers.get("Docker-Content-Digest")
        return digest or self.manifest(reference)[1]

    def put_manifest(self, manifest: dict[str, Any], reference: str) -> str:
        """Upload ``manifest`` byte-exactly (its digest is ours to know) under ``reference``."""
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": manifest.get("mediaType", OCI_MANIFEST)}
        self._check(
            self.do_request(self._url(f"manifests/{reference}"), "PUT", data=body, headers=headers),
            f"manifest upload to {self.ref}",
        )
        return sha256_digest(body)

    # ---- blobs ----

    def has_blob(self, digest: str) -> bool:
        return bool(self.do_request(self._url(f"blobs/{digest}"), "HEAD").status_code == 200)

    def upload(self, data: bytes | BinaryIO, digest: str, size: int) -> None:
        """Monolithic upload that streams a file object instead of reading it whole."""
        if self.has_blob(digest):
            return
        start = self._check(
            self.do_request(self._url("blobs/uploads/"), "POST", headers={"Content-Length": "0"}),
            "starting a blob upload",
        )
        location = self._get_location(start, self.container)
        separator = "&" if "?" in location else "?"
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self._check(
            self.do_request(f"{location}{separator}digest={digest}", "PUT", data=data,
                            headers=headers),
            f"uploading blob {digest[:19]}",
        )  # fmt: skip

    def download(self, digest: str, dest: Path, advance: Advance) -> Path:
        """Fetch a blob into ``dest``, resuming a partial file, and verify its digest.

        A blob whose bytes do not hash to its digest is deleted and refused.
        """
        partial = dest.with_name(dest.name + ".partial")
        hasher = hashlib.sha256()
        offset = _rehash(partial, hasher)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.do_request(self._url(f"blobs/{digest}"), "GET", headers=headers,
                             stream=True) as response:  # fmt: skip
            self._check(response, f"blob {digest[:19]}")
            if offset and response.status_code != 206:  # no ranges: start over
                offset, hasher = 0, hashlib.sha256()
            advance(offset)
            with partial.open("ab" if offset else "wb") as out:
                for piece in _pieces(response):
                    out.write(piece)
                    hasher.update(piece)
                    advance(len(piece))
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise BackendError(
                f"blob {digest} failed verification (its content hashes to {actual}); refusing it",
                expected=digest,
                actual=actual,
            )
        partial.replace(dest)
        return dest


def docker_config() -> Path:
    """docker's config file: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _rewindable(data: Any) -> bool:
    """A body can be sent again unless it is a stream already (partly) read."""
    return data is None or isinstance(data, bytes | str)


def _challenge(ref: Reference) -> str:
    scheme = "http" if ref.insecure else "https"
    try:
        response = requests.get(f"{scheme}://{ref.registry}/v2/", timeout=30)
    except requests.RequestException as exc:
        raise BackendError(f"registry {ref.registry} unreachable: {exc}") from None
    return response.headers.get("Www-Authenticate", "")


def _rehash(partial: Path, hasher: Any) -> int:
    if not partial.exists():
        return 0
    with partial.open("rb") as f:
        while chunk := f.read(_READ):
            hasher.update(chunk)
    return partial.stat().st_size


def _pieces(response: requests.Response) -> Iterator[bytes]:
    for piece in response.iter_content(chunk_size=_READ):
        if piece:
            yield piece

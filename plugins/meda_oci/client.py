"""A registry client that streams, caps, verifies, resumes and keeps credentials at home.

A registry may be hostile. Every response is streamed and read up to a cap (a manifest,
an error body, a token) or up to the size its descriptor declared (a blob); every request
runs within the pull's or push's deadline; credentials go to the registry's own origin
only, never along a redirect, to an upload location elsewhere or to a foreign token realm.
(oras-py is used for docker's config and credential helpers.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Generator
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin

import requests
import urllib3

from meda_core.plugin import BackendError, NotFound, Reference, sha256_file
from meda_oci import auth
from meda_oci.deadline import Deadline
from meda_oci.formats import MAX_MANIFEST, checked_digest
from meda_oci.settings import Credentials, OciSettings

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT_MANIFESTS = [OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"]
_READ = 1024 * 1024
RETRIES = 3
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 300
MAX_TOKEN_BODY = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
Advance = Callable[[int], None]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _verify(
    digest: str,
    size: int,
    received: int,
    hasher: Any,
    refused: Callable[[], object] | None = None,
) -> None:
    """A blob received whole: ``size`` bytes hashing to ``digest``. Otherwise refused; when
    its bytes are wrong (not merely short), ``refused()`` runs first."""
    if received < size:
        raise BackendError(
            f"blob {digest} ended after {received} of its {size} bytes", expected=size
        )
    actual = f"sha256:{hasher.hexdigest()}"
    if actual != digest:
        if refused is not None:
            refused()
        raise BackendError(
            f"blob {digest} failed verification (its content hashes to {actual}); refusing it",
            expected=digest,
            actual=actual,
        )


class _TooLong(BackendError):
    """A blob sent more bytes than its descriptor declares."""


class RegistryClient:
    """One registry, one repository: the calls meda's oci backend needs.

    One client serves a whole pull or push, from as many threads as ``connections``: they
    share its connection pool and its one login (challenge, then token).
    """

    def __init__(
        self, ref: Reference, deadline: Deadline | None = None, connections: int = 1
    ) -> None:
        self.ref = ref
        self.deadline = deadline or Deadline(OciSettings().deadline)
        self.prefix = "http" if ref.insecure else "https"
        #: The only origin meda's credentials go to and whose words it repeats.
        self.origin = auth.origin(f"{self.prefix}://{ref.registry}/")
        self.session = self.deadline.session(connections)
        self._login_lock = threading.Lock()
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._credentials = Credentials()
        self.login = auth.login_for(ref, self._credentials)
        self._token = self.login.bearer
        self._scheme = self._challenge()
        self._needs_login = self._scheme == "basic" and not (self.login.basic or self._token)

    # ---- requests ----

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request with its credentials, following redirects; the body is not read yet.

        A Bearer challenge is answered once with a token from the registry's realm.
        """
        if self._needs_login:
            host = self._credentials.host
            hint = (
                ""
                if not self.login.elsewhere
                else " (MEDA_REGISTRY_* credentials are set, but MEDA_REGISTRY_HOST is not set)"
                if host is None
                else f" (MEDA_REGISTRY_* credentials are set, for {host} only)"
            )
            raise BackendError(
                f"registry {self.ref.registry} requires a login: set MEDA_REGISTRY_HOST, "
                f"MEDA_REGISTRY_USERNAME and MEDA_REGISTRY_PASSWORD, or log in with docker{hint}",
                registry=self.ref.registry,
            )
        sent_with = self._token
        response = self._follow(method, url, data, headers or {})
        scheme, params = auth.challenge(response.headers.get("Www-Authenticate", ""))
        if response.status_code == 401 and scheme == "bearer" and _rewindable(data):
            response.close()
            with self._login_lock:  # one token for all threads, unless it is refused
                if self._token == sent_with:
                    self._token = self._fetch_token(params)
            response = self._follow(method, url, data, headers or {})
        if response.status_code in (401, 403):
            response.close()
            raise BackendError(
                f"registry {self.ref.registry} refused the credentials ({response.status_code})",
                registry=self.ref.registry,
            )
        return response

    def _follow(
        self, method: str, url: str, data: Any, headers: dict[str, str]
    ) -> requests.Response:
        """Redirects of GET and HEAD are followed here, credentials kept to the registry."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, data, {**headers, **self._authorization(url)})
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or method not in ("GET", "HEAD"):
                return response
            response.close()
            url = self._target(url, location, "redirected to")
        raise BackendError(f"registry {self.ref.registry}: more than {MAX_REDIRECTS} redirects")

    def _target(self, base: str, location: str | None, what: str) -> str:
        """Where ``location`` (relative to ``base``) leads, if meda goes there: http(s)
        only, and never from https down to http."""
        target = urljoin(base, location or "")
        scheme = auth.origin(target)[0]
        if (
            not location
            or scheme not in ("http", "https")
            or (scheme == "http" and self.prefix == "https")
        ):
            raise BackendError(
                f"registry {self.ref.registry} {what} {(location or '')[:200]!r}, which meda "
                "does not follow (none, another scheme or https to http)",
                registry=self.ref.registry,
            )
        return target

    def _authorization(self, url: str) -> dict[str, str]:
        """The registry's credentials, for a URL of the registry's own origin only."""
        if auth.origin(url) != self.origin:
            return {}
        if self._token:
            return {"Authorization": f"Bearer {self._token}"}
        if self.login.basic and self._scheme == "basic":
            return {"Authorization": f"Basic {self.login.basic}"}
        return {}

    def _send(
        self,
        method: str,
        url: str,
        data: Any,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request, retried briefly on connection errors and 5xx only; never a redirect."""
        headers = {"Accept-Encoding": "identity", **headers}
        for attempt in range(RETRIES):
            self.deadline.check()
            try:
                response: requests.Response = self.session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    params=params,
                    stream=True,
                    allow_redirects=False,
                    timeout=self.deadline.timeouts(),
                )
            except requests.RequestException as exc:
                if self.deadline.expired:
                    raise self.deadline.error() from None
                retry = isinstance(exc, requests.ConnectionError | requests.Timeout)
                if not retry or attempt + 1 == RETRIES or not _rewindable(data):
                    raise BackendError(f"registry {self.ref.registry}: {exc}") from None
            else:
                if self.deadline.expired:  # the headers may have ended at the deadline's cut
                    response.close()
                    raise self.deadline.error()
                if response.status_code < 500 or attempt + 1 == RETRIES or not _rewindable(data):
                    return response
                response.close()
            time.sleep(min(0.5 * 2**attempt, self.deadline.remaining()))
        raise AssertionError("unreachable")

    def _challenge(self) -> str:
        """The scheme (``basic``, ``bearer`` or empty) the registry's ``/v2/`` asks for."""
        response = self._send("GET", f"{self.prefix}://{self.ref.registry}/v2/", None, {})
        response.close()
        return auth.challenge(response.headers.get("Www-Authenticate", ""))[0]

    def _fetch_token(self, params: dict[str, str]) -> str:
        """A token from the challenge's realm, if it is one meda may ask."""
        realm = auth.checked_realm(params.get("realm"), self.ref, self._credentials)
        headers = {"Accept": "application/json"}
        if self.login.basic:
            headers["Authorization"] = f"Basic {self.login.basic}"
        query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        response = self._send("GET", realm, None, headers, params=query)
        body = self._read(response, MAX_TOKEN_BODY, "token response")
        try:
            answer = json.loads(body) if response.status_code == 200 else {}
        except ValueError:
            answer = {}
        token = (
            (answer.get("token") or answer.get("access_token"))
            if isinstance(answer, dict)
            else None
        )
        if not isinstance(token, str) or not token:
            raise BackendError(
                f"registry {self.ref.registry}: no token from its realm ({response.status_code})",
                registry=self.ref.registry,
            )
        return token

    # ---- reading responses ----

    def _stream(self, response: requests.Response) -> Generator[bytes, None, None]:
        """The body as it arrives, undecoded, until the deadline."""
        try:
            while piece := response.raw.read1(_READ, decode_content=False):
                self.deadline.check()
                yield piece
            self.deadline.check()  # the end may be the deadline's own cut
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            if self.deadline.expired:
                raise self.deadline.error() from None
            raise BackendError(f"registry {self.ref.registry}: {exc}") from None
        finally:
            response.close()

    def _read(self, response: requests.Response, limit: int, what: str) -> bytes:
        """The whole body, refused past ``limit`` bytes."""
        body = bytearray()
        for piece in self._stream(response):
            body += piece
            if len(body) > limit:
                response.close()
                raise BackendError(
                    f"{what} from {self.ref.registry} is over {limit} bytes; refusing it",
                    limit=limit,
                )
        return bytes(body)

    def _url(self, path: str) -> str:
        return f"{self.prefix}://{self.ref.registry}/v2/{self.ref.repository}/{path}"

    def _check(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code == 404:
            response.close()
            raise NotFound(f"{what}: not found in {self.ref.registry}", reference=str(self.ref))
        if response.status_code >= 400:
            if auth.origin(response.url) == self.origin:
                text = _head(self._stream(response), MAX_ERROR_BODY).decode(errors="replace")
            else:  # a host a redirect led to: its words are not repeated to API clients
                response.close()
                text = f"(from {auth.origin(response.url)[1] or 'another host'})"
            raise BackendError(
                f"{what}: registry answered {response.status_code}: {text}",
                reference=str(self.ref),
            )
        return response

    # ---- manifests ----

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """The manifest's exact bytes (at most MAX_MANIFEST) and their digest."""
        headers = {"Accept": ", ".join(ACCEPT_MANIFESTS)}
        response = self._check(
            self.do_request(self._url(f"manifests/{reference}"), "GET", headers=headers),
            f"manifest {self.ref}",
        )
        raw = self._read(response, MAX_MANIFEST, f"manifest {self.ref}")
        return raw, sha256_digest(raw)

    def manifest_digest(self, reference: str) -> str | None:
        headers = {"Accept": ", ".join(ACCEPT_MANIFESTS)}
        response = self.do_request(self._url(f"manifests/{reference}"), "HEAD", headers=headers)
        response.close()
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise BackendError(
                f"manifest {self.ref}: registry answered {response.status_code}",
                reference=str(self.ref),
            )
        digest = response.headers.get("Docker-Content-Digest")
        return checked_digest(digest) if digest else self.manifest(reference)[1]

    def put_manifest(self, manifest: dict[str, Any], reference: str) -> str:
        """Upload ``manifest`` byte-exactly (its digest is ours to know) under ``reference``."""
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": manifest.get("mediaType", OCI_MANIFEST)}
        self._check(
            self.do_request(self._url(f"manifests/{reference}"), "PUT", data=body, headers=headers),
            f"manifest upload to {self.ref}",
        ).close()
        return sha256_digest(body)

    # ---- blobs ----

    def has_blob(self, digest: str) -> bool:
        response = self.do_request(self._url(f"blobs/{digest}"), "HEAD")
        response.close()
        return bool(response.status_code == 200)

    def upload(self, data: bytes | BinaryIO, digest: str, size: int) -> None:
        """Monolithic upload that streams a file object instead of reading it whole.

        The upload location may be on another host: it gets the bytes, not the credentials.
        """
        if self.has_blob(digest):
            return
        start = self._check(
            self.do_request(self._url("blobs/uploads/"), "POST", headers={"Content-Length": "0"}),
            "starting a blob upload",
        )
        start.close()
        location = self._upload_location(start)
        separator = "&" if "?" in location else "?"
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self._check(
            self.do_request(
                f"{location}{separator}digest={digest}", "PUT", data=data, headers=headers
            ),
            f"uploading blob {digest[:19]}",
        ).close()

    def _upload_location(self, start: requests.Response) -> str:
        location = start.headers.get("Location")
        return self._target(self._url("blobs/uploads/"), location, "gave the upload location")

    def download(self, digest: str, size: int, dest: Path, advance: Advance) -> Path:
        """Fetch a blob of ``size`` bytes into ``dest``, resuming a partial file, verified.

        A file already at ``dest`` is used only if it hashes to ``digest``. A blob that sends
        more than ``size`` bytes is cut off there; one whose bytes do not hash to its digest
        is deleted; both are refused.
        """
        if dest.exists():
            if dest.stat().st_size == size and sha256_file(dest) == digest:
                advance(size)
                return dest
            dest.unlink()
        partial = dest.with_name(dest.name + ".partial")
        hasher = hashlib.sha256()
        offset = _rehash(partial, hasher, size)
        if offset == size and f"sha256:{hasher.hexdigest()}" != digest:
            offset, hasher = 0, hashlib.sha256()  # whole but wrong: fetched again
        received = offset
        if offset < size:
            received, hasher = self._fetch_into(digest, size, partial, offset, hasher, advance)
        else:  # a pull cut off between its last byte and the rename: nothing to fetch
            advance(size)
        # Short: the partial file stays (the next pull resumes it, and re-hashes it first).
        _verify(digest, size, received, hasher, refused=lambda: partial.unlink(missing_ok=True))
        partial.replace(dest)
        return dest

    def _fetch_into(
        self, digest: str, size: int, partial: Path, offset: int, hasher: Any, advance: Advance
    ) -> tuple[int, Any]:
        """Append the blob's bytes from ``offset`` to ``partial``; its length and hash then."""
        with contextlib.ExitStack() as files:

            def sink(start: int) -> Callable[[bytes], object]:
                return files.enter_context(partial.open("ab" if start else "wb")).write

            try:
                return self.receive(digest, size, sink, advance, offset, hasher)
            except _TooLong:
                files.close()
                partial.unlink(missing_ok=True)
                raise

    def stream(
        self, digest: str, size: int, consume: Callable[[bytes], object], advance: Advance
    ) -> None:
        """The blob's bytes to ``consume`` as they arrive, hashed on the way; refused (after
        the fact: ``consume`` must keep nothing it got until this returns) if they are not
        ``size`` bytes hashing to ``digest``."""
        received, hasher = self.receive(digest, size, lambda _: consume, advance)
        _verify(digest, size, received, hasher)

    def receive(
        self,
        digest: str,
        size: int,
        sink: Callable[[int], Callable[[bytes], object]],
        advance: Advance,
        offset: int = 0,
        hasher: Any = None,
    ) -> tuple[int, Any]:
        """GET the blob from ``offset`` on, each piece hashed and given to what ``sink``
        returns for the offset the registry starts at, never past ``size`` bytes; how many
        bytes it had in all, and the hash (verified by the caller)."""
        hasher = hasher or hashlib.sha256()
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._check(
            self.do_request(self._url(f"blobs/{digest}"), "GET", headers=headers),
            f"blob {digest[:19]}",
        )
        if offset and response.status_code != 206:  # no ranges: start over
            offset, hasher = 0, hashlib.sha256()
        advance(offset)
        received, consume = offset, sink(offset)
        for piece in self._stream(response):
            received += len(piece)
            if received > size:
                response.close()
                raise _TooLong(
                    f"blob {digest} is longer than the {size} bytes its descriptor "
                    "declares; refusing it",
                    expected=size,
                )
            hasher.update(piece)
            consume(piece)
            advance(len(piece))
        return received, hasher


def _rewindable(data: Any) -> bool:
    """A body can be sent again unless it is a stream already (partly) read."""
    return data is None or isinstance(data, bytes | str)


def _rehash(partial: Path, hasher: Any, size: int) -> int:
    """Feed a partial download to ``hasher``; its length (a too long one is dropped)."""
    if not partial.exists():
        return 0
    if partial.stat().st_size > size:
        partial.unlink()
        return 0
    with partial.open("rb") as f:
        while chunk := f.read(_READ):
            hasher.update(chunk)
    return partial.stat().st_size


def _head(pieces: Generator[bytes, None, None], limit: int) -> bytes:
    """The first ``limit`` bytes of a stream; the rest is never read."""
    found = b""
    for piece in pieces:
        found += piece
        if len(found) >= limit:
            break
    pieces.close()
    return found[:limit]

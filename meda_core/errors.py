"""The one error hierarchy of meda: every failure a user can see is one of these.

Each class carries the machine-readable ``code`` of the REST error body, the HTTP
status the API answers with and the exit code the CLI ends with. The API and the
CLI map errors in exactly one place each, by reading these attributes.

    MedaError                      500  exit 1   INTERNAL_ERROR
    ├── InvalidRequest             400  exit 2   INVALID_REQUEST
    │   ├── PayloadTooLarge        413           PAYLOAD_TOO_LARGE
    │   ├── UnsafeDisk                           UNSAFE_DISK
    │   ├── ExceedsHost                          EXCEEDS_HOST
    │   ├── UnsupportedMediaType   415           UNSUPPORTED_MEDIA_TYPE
    │   ├── MisdirectedRequest     421           MISDIRECTED_REQUEST
    │   └── IdempotencyMismatch    422           IDEMPOTENCY_MISMATCH
    ├── Unauthorized               401  exit 7   UNAUTHORIZED
    ├── Forbidden                  403  exit 7   FORBIDDEN
    ├── RateLimited                429  exit 8   RATE_LIMITED
    ├── NotFound                   404  exit 3   NOT_FOUND
    │   ├── VMNotFound                           VM_NOT_FOUND
    │   └── ImageNotFound                        IMAGE_NOT_FOUND
    ├── Conflict                   409  exit 4   CONFLICT
    │   ├── VMExists                             VM_EXISTS
    │   ├── ImageExists                          IMAGE_EXISTS
    │   ├── InvalidState                         INVALID_STATE
    │   └── Cancelled                            CANCELLED
    ├── BackendUnavailable         503  exit 5   BACKEND_UNAVAILABLE
    │   └── InsufficientCapacity                 INSUFFICIENT_CAPACITY
    ├── BackendError               500  exit 6   BACKEND_ERROR
    ├── NoAgent                    422  exit 10  NO_AGENT
    ├── TimedOut                   408  exit 124 TIMEOUT
    │   ├── CommandTimedOut
    │   └── WaitTimedOut
    ├── RegistrationError          500  exit 1   INTERNAL_ERROR
    └── StateVersionError          500  exit 9   STATE_VERSION
"""

from __future__ import annotations

from typing import Any, ClassVar


def _subclasses(cls: type[MedaError]) -> list[type[MedaError]]:
    """``cls`` and every class below it, parents first."""
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


class MedaError(Exception):
    """Base of every meda error; ``details`` is extra structured context."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @classmethod
    def from_body(cls, body: Any, status: int) -> MedaError:
        """The error a server answered with: its class found by ``code``, else by status."""
        if not isinstance(body, dict) or not isinstance(body.get("error"), str):
            body = {"error": f"the server answered {status}: {str(body)[:200]}", "code": ""}
        # A code several classes share (TIMEOUT, INTERNAL_ERROR) is their parent's.
        classes = {c.code: c for c in reversed(_subclasses(MedaError))}
        by_status = {c.http_status: c for c in reversed(_subclasses(MedaError))}
        found = classes.get(body.get("code", ""), by_status.get(status, MedaError))
        details = {k: v for k, v in (body.get("details") or {}).items() if k != "message"}
        error = found.__new__(found)  # past subclasses' own __init__ signatures
        MedaError.__init__(error, body["error"], **details)
        return error

    def to_body(self) -> dict[str, Any]:
        """The seed's error body: ``{error, code, details}``."""
        return {
            "error": self.message,
            "code": self.code,
            "details": {"message": self.message, **self.details},
        }


class InvalidRequest(MedaError):
    """The request itself is wrong: a bad name, size, field or JSON document."""

    code = "INVALID_REQUEST"
    http_status = 400
    exit_code = 2


class PayloadTooLarge(InvalidRequest):
    """A request body over the server's limit."""

    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnsafeDisk(InvalidRequest):
    """A disk in a format meda does not keep, or one that names files outside itself."""

    code = "UNSAFE_DISK"


class ExceedsHost(InvalidRequest):
    """400: the VM asks for more than this host can ever give one VM."""

    code = "EXCEEDS_HOST"


class UnsupportedMediaType(InvalidRequest):
    """A request body that is not ``application/json`` where JSON is expected."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class MisdirectedRequest(InvalidRequest):
    """A ``Host`` header that names neither loopback nor a name this server answers to."""

    code = "MISDIRECTED_REQUEST"
    http_status = 421


class IdempotencyMismatch(InvalidRequest):
    """422: an ``Idempotency-Key`` this client used before, sent with another request
    (method, path or body): a key names one request, never two."""

    code = "IDEMPOTENCY_MISMATCH"
    http_status = 422


class Unauthorized(MedaError):
    """The server wants a bearer token and got none, or a wrong one."""

    code = "UNAUTHORIZED"
    http_status = 401
    exit_code = 7


class Forbidden(MedaError):
    """The request came from a web page (an ``Origin``) this server does not trust."""

    code = "FORBIDDEN"
    http_status = 403
    exit_code = 7


class RateLimited(MedaError):
    """Too many changes from one client too fast; ``details.retry_after`` says when to retry."""

    code = "RATE_LIMITED"
    http_status = 429
    exit_code = 8


class NotFound(MedaError):
    """A named resource does not exist."""

    code = "NOT_FOUND"
    http_status = 404
    exit_code = 3


class VMNotFound(NotFound):
    code = "VM_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"VM '{name}' not found", name=name)


class ImageNotFound(NotFound):
    code = "IMAGE_NOT_FOUND"


class Conflict(MedaError):
    """The request clashes with what exists or with the resource's state."""

    code = "CONFLICT"
    http_status = 409
    exit_code = 4


class VMExists(Conflict):
    code = "VM_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"VM '{name}' already exists (force replaces it: --force, \"force\": true)",
            name=name,
        )


class ImageExists(Conflict):
    code = "IMAGE_EXISTS"


class InvalidState(Conflict):
    """The operation is not allowed in the VM's current state."""

    code = "INVALID_STATE"


class Cancelled(Conflict):
    """409: the operation was cancelled before it finished."""

    code = "CANCELLED"


class BackendUnavailable(MedaError):
    """No backend can serve a role here, or the chosen one lacks something."""

    code = "BACKEND_UNAVAILABLE"
    http_status = 503
    exit_code = 5


class InsufficientCapacity(BackendUnavailable):
    """503 with Retry-After: the host has no room for this now (other VMs hold it)."""

    code = "INSUFFICIENT_CAPACITY"


class BackendError(MedaError):
    """A backend tried and failed (a hypervisor that would not start, a tool that erred)."""

    code = "BACKEND_ERROR"
    http_status = 500
    exit_code = 6


class NoAgent(MedaError):
    """422: the guest has no agent that answers (or its hypervisor gives it no channel);
    waiting will not help, a guest with an agent will."""

    code = "NO_AGENT"
    http_status = 422
    exit_code = 10
    HOW = (
        "images from `meda images build` ship meda's agent and start it at boot; "
        "see docs/agent.md to add it to another image"
    )

    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f"VM '{name}' has no guest agent that answers ({why}); {self.HOW}", name=name
        )


class TimedOut(MedaError):
    """408: something ran past the timeout it was given. Exit 124, as ``timeout(1)``'s."""

    code = "TIMEOUT"
    http_status = 408
    exit_code = 124


class CommandTimedOut(TimedOut):
    """A command ran past its timeout and was killed; ``details`` holds what it wrote until
    then (``stdout``, ``stderr``, ``truncated``)."""


class WaitTimedOut(TimedOut):
    """What a wait was for did not come in its timeout; ``details`` says what is still
    ``pending`` and the VM's ``state``."""


class RegistrationError(MedaError):
    """A plugin tried to register something that is not a proper backend."""


class StateVersionError(MedaError):
    """MEDA_HOME's state was written by a newer meda than this one."""

    code = "STATE_VERSION"
    http_status = 500
    exit_code = 9

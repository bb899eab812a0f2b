"""``Endpoint``: one API operation declared once (HTTP form, documentation and core call).

An endpoint is a descriptor on :class:`~meda_core.interface.table.MedaApi`: read from an API
object it is that object's typed method (the core call's signature without its ``Meda``);
read from the class it is the declaration that :mod:`meda_api.routes` and
:class:`~meda_core.interface.remote.RemoteApi` are made from. Nothing here knows a web
framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from pydantic import BaseModel

if TYPE_CHECKING:
    from meda_core.facade import Meda

P = ParamSpec("P")
R = TypeVar("R")
#: ``content``: the request body as raw bytes (``application/octet-stream``), given to the
#: call as an iterable of chunks as it arrives.
Where = Literal["path", "query", "header", "body", "content"]


@dataclass(frozen=True)
class Param:
    """One argument of a call, and where it travels in a request.

    ``name`` is the core call's parameter and the HTTP name, unless ``alias`` gives another
    (one Python cannot spell: ``for``); ``pattern`` is published in the schema only (the
    core checks names itself, with a clear message); ``holds``: a value other than the
    default keeps the request open (a wait; a required one always does). A ``list`` type
    repeats in the query.
    """

    name: str
    type: Any
    where: Where = "query"
    default: Any = ...
    description: str | None = None
    ge: float | None = None
    le: float | None = None
    pattern: str | None = None
    holds: bool = False
    alias: str | None = None
    #: Values with which a stream's request ends at once (a page instead): not held.
    ends: tuple[Any, ...] = ()

    @property
    def http_name(self) -> str:
        return self.alias or self.name

    @property
    def required(self) -> bool:
        return self.default is ...


@dataclass
class Endpoint(Generic[P, R]):
    """One operation: ``method`` ``path`` (under ``/api/v1``) answering ``status`` with
    ``response`` (None: any JSON object), documented ``errors`` (status: description), and
    ``call``, what it does on a :class:`~meda_core.facade.Meda`.

    ``background``: the kind of background operation it becomes when the client prefers
    (``Prefer: respond-async``); ``stream``: the media type of a stream of events it answers
    with (``call`` returns an :class:`~meda_core.interface.feeds.EventFeed`); ``wait``: the
    call's form for an event loop, used while a ``holds`` parameter keeps the request open;
    ``page``: the JSON a stream's request answers with when a parameter ``ends`` it;
    ``store_read``: while the VMs are watched (:attr:`~meda_core.facade.Meda.watched`) the
    call only reads the state store, so a server may run it on its event loop;
    ``idempotent``: it creates something, and takes an ``Idempotency-Key`` that makes a retry
    answer as the first request did (:mod:`meda_core.state.idempotency`).
    """

    method: str
    path: str
    call: Callable[Concatenate[Meda, P], R]
    tag: str
    params: tuple[Param, ...] = ()
    response: type[BaseModel] | None = None
    status: int = 200
    errors: Mapping[int, str] = field(default_factory=dict)
    operation_id: str | None = None
    doc: str | None = None
    background: str | None = None
    stream: str | None = None
    download: str | None = None
    wait: Callable[..., Awaitable[R]] | None = None
    store_read: bool = False
    page: type[BaseModel] | None = None
    idempotent: bool = False
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.operation_id = self.operation_id or name

    @overload
    def __get__(self, api: None, owner: type) -> Endpoint[P, R]: ...
    @overload
    def __get__(self, api: Invoker, owner: type) -> Callable[P, R]: ...
    def __get__(self, api: Invoker | None, owner: type) -> Endpoint[P, R] | Callable[P, R]:
        if api is None:
            return self
        bound: Callable[P, R] = partial(api.invoke, self)
        return bound

    @property
    def body(self) -> Param | None:
        return next((p for p in self.params if p.where == "body"), None)

    @property
    def content(self) -> Param | None:
        """The parameter the raw request body goes to, if the operation takes one."""
        return next((p for p in self.params if p.where == "content"), None)


class Invoker:
    """What an API object does with a call: runs it here, or sends it to a server."""

    def invoke(self, endpoint: Endpoint[Any, Any], /, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def endpoints(api: type) -> list[Endpoint[Any, Any]]:
    """The endpoints declared on ``api`` and its bases, in declaration order."""
    found: dict[str, Endpoint[Any, Any]] = {}
    for cls in reversed(api.__mro__):
        for name, value in vars(cls).items():
            if isinstance(value, Endpoint):
                found[name] = value
    return list(found.values())

"""The MCP tools: the API operations an MCP client may call, their arguments and answers.

Each :class:`Tool` is an operation of the table (:class:`~meda_core.interface.table.MedaApi`)
with its parameters as one JSON object (a request body's fields beside the VM's name), or
one of the few calls MCP needs in another shape (file contents as text or base64, a
console's last lines). Nothing here knows the MCP SDK: :mod:`meda_api.mcp` serves these.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from meda_core.errors import InvalidRequest, PayloadTooLarge
from meda_core.inputs.choices import MAX_CONSOLE_LINES
from meda_core.inputs.names import VM_NAME_PATTERN
from meda_core.inputs.validation import describe
from meda_core.interface.endpoint import Endpoint
from meda_core.interface.table import MedaApi
from meda_core.models import FileResult

#: The largest guest file ``get_file`` answers with (it travels inline, in JSON).
MAX_FILE_BYTES = 1024 * 1024
#: Console lines ``console`` gives when the client names no number.
CONSOLE_LINES = 100

Call = Callable[[MedaApi, BaseModel], BaseModel]


class Encoding(StrEnum):
    """How a file's bytes travel in a tool's JSON."""

    TEXT = "text"
    BASE64 = "base64"


class Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=VM_NAME_PATTERN, description="VM name")


class PutFileArguments(Arguments):
    path: str = Field(description="Absolute path in the guest")
    content: str = Field(description="The file's content, as ``encoding`` says")
    encoding: Encoding = Field(Encoding.TEXT, description="text (UTF-8) or base64")
    mode: str = Field("0644", pattern=r"^[0-7]{1,4}$", description="Octal permissions")
    owner: str | None = Field(None, pattern=r"^\d+:\d+$", description="uid:gid")


class GetFileArguments(Arguments):
    path: str = Field(description="Absolute path in the guest")
    encoding: Encoding = Field(
        Encoding.TEXT, description="text (the file must be UTF-8) or base64 (any bytes)"
    )


class FileContent(BaseModel):
    """A guest file's content, inline."""

    path: str
    size: int = Field(description="Bytes in the file")
    encoding: Encoding
    content: str


class ConsoleArguments(Arguments):
    tail: int = Field(
        CONSOLE_LINES, ge=0, le=MAX_CONSOLE_LINES, description="The last N lines of the log"
    )


class ConsoleTail(BaseModel):
    """The last lines of a VM's serial console, as UTF-8 text (escape sequences kept)."""

    name: str
    text: str


@dataclass(frozen=True)
class Tool:
    """One MCP tool: its ``arguments`` model, its ``result`` model and what it calls."""

    name: str
    description: str
    arguments: type[BaseModel]
    result: type[BaseModel]
    call: Call
    read_only: bool = False
    destructive: bool = False

    def run(self, api: MedaApi, given: Mapping[str, Any]) -> BaseModel:
        """Validate ``given`` (a 400 names each problem, nothing is done) and call."""
        unknown = sorted(set(given) - _accepted(self.arguments))
        if unknown:
            raise InvalidRequest(
                f"unknown argument(s) for {self.name}: {', '.join(unknown)}", unknown=unknown
            )
        try:
            arguments = self.arguments.model_validate(dict(given))
        except ValidationError as error:
            message, problems = describe(error.errors())
            raise InvalidRequest(message, errors=problems) from None
        return self.call(api, arguments)


def _accepted(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def from_endpoint(endpoint: Endpoint[Any, Any], name: str, description: str, **hints: bool) -> Tool:
    """The tool of a table operation: its parameters (and its body's fields) as arguments."""
    if endpoint.response is None:
        raise TypeError(f"{endpoint.name} answers no model")
    return Tool(
        name,
        description,
        _arguments(endpoint),
        endpoint.response,
        lambda api, arguments: _invoke(api, endpoint, arguments),
        **hints,
    )


def _arguments(endpoint: Endpoint[Any, Any]) -> type[BaseModel]:
    """One model of every argument: the body model's fields and the other parameters."""
    body = endpoint.body
    fields: dict[str, Any] = {}
    for param in endpoint.params:
        if param is body:
            continue
        field = Field(
            param.default,
            description=param.description,
            ge=param.ge,
            le=param.le,
            pattern=param.pattern,
        )
        fields[param.name] = (param.type, field)
    base = body.type if body is not None else BaseModel
    doc = endpoint.doc or (body.type.__doc__ if body is not None else None)
    if body is not None and set(fields) & set(body.type.model_fields):
        raise TypeError(f"{endpoint.name}: a parameter shares its name with a body field")
    model: type[BaseModel] = create_model(
        f"{endpoint.name.title().replace('_', '')}Arguments",
        __base__=base,
        __doc__=doc,
        **fields,
    )
    return model


def _invoke(api: MedaApi, endpoint: Endpoint[Any, Any], arguments: BaseModel) -> BaseModel:
    body = endpoint.body
    given = arguments.model_dump(mode="json", exclude_unset=True)
    kwargs = {p.name: getattr(arguments, p.name) for p in endpoint.params if p is not body}
    if body is not None:
        fields = {key: value for key, value in given.items() if key in body.type.model_fields}
        kwargs[body.name] = body.type.model_validate(fields)
    result: BaseModel = api.invoke(endpoint, **kwargs)
    return result


def _put_file(api: MedaApi, arguments: BaseModel) -> BaseModel:
    assert isinstance(arguments, PutFileArguments)
    data = _decode(arguments.content, arguments.encoding)
    result: FileResult = api.put_file(
        arguments.name, arguments.path, data, mode=arguments.mode, owner=arguments.owner
    )
    return result


def _decode(content: str, encoding: Encoding) -> bytes:
    if encoding is Encoding.TEXT:
        try:
            return content.encode()
        except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
            raise InvalidRequest("content is not valid Unicode text") from None
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("content is not valid base64") from None


def _get_file(api: MedaApi, arguments: BaseModel) -> BaseModel:
    assert isinstance(arguments, GetFileArguments)
    chunks = api.get_file(arguments.name, arguments.path)
    try:
        data = _read_at_most(chunks, MAX_FILE_BYTES, arguments.path)
    finally:  # a generator, or a server's response: what is left is not read
        getattr(chunks, "close", lambda: None)()
    if arguments.encoding is Encoding.BASE64:
        content = base64.b64encode(data).decode()
    else:
        try:
            content = data.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"{arguments.path} is not UTF-8 text: ask for it with encoding=base64",
                path=arguments.path,
            ) from None
    return FileContent(
        path=arguments.path, size=len(data), encoding=arguments.encoding, content=content
    )


def _read_at_most(chunks: Iterator[bytes], limit: int, path: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"{path} is over {limit} bytes, the most a tool answers with: copy it with "
                "meda cp or the API's files endpoint",
                limit=limit,
            )
        parts.append(chunk)
    return b"".join(parts)


def _console(api: MedaApi, arguments: BaseModel) -> BaseModel:
    assert isinstance(arguments, ConsoleArguments)
    with api.console(arguments.name, tail=arguments.tail) as feed:
        text = "".join(feed)
    return ConsoleTail(name=arguments.name, text=text)


TOOLS: tuple[Tool, ...] = (
    from_endpoint(
        MedaApi.list_vms,
        "list_vms",
        "List the VMs: name, state, IP, size, image and labels. Filter by label "
        "(key=value, or key) and state.",
        read_only=True,
    ),
    from_endpoint(
        MedaApi.get_vm,
        "get_vm",
        "One VM in full: state, network, port forwards, policies.",
        read_only=True,
    ),
    from_endpoint(
        MedaApi.run_image,
        "run",
        "Run a VM from an image (pulled if missing): create it and start it, warm from a "
        "template snapshot when one is ready.",
    ),
    from_endpoint(
        MedaApi.create_vm, "create_vm", "Create a VM (stopped) from an image; start it after."
    ),
    from_endpoint(MedaApi.start_vm, "start_vm", "Start a stopped VM."),
    from_endpoint(
        MedaApi.stop_vm,
        "stop_vm",
        "Power a VM off: ACPI, then killed after timeout seconds (force: at once).",
        destructive=True,
    ),
    from_endpoint(
        MedaApi.delete_vm,
        "delete_vm",
        "Delete a VM and its disk; a running guest is killed at once.",
        destructive=True,
    ),
    from_endpoint(
        MedaApi.exec_command,
        "exec",
        "Run a command (argv, no shell) in a running VM through its agent, to its end: "
        "exit code, stdout and stderr. stdin is its whole input.",
        destructive=True,
    ),
    Tool(
        "put_file",
        "Write a file in a running VM (replaced whole), its content given as UTF-8 text or "
        "base64, through the guest's agent.",
        PutFileArguments,
        FileResult,
        _put_file,
        destructive=True,
    ),
    Tool(
        "get_file",
        f"Read a file of a running VM (at most {MAX_FILE_BYTES} bytes) as UTF-8 text or "
        "base64, through the guest's agent.",
        GetFileArguments,
        FileContent,
        _get_file,
        read_only=True,
    ),
    Tool(
        "console",
        "The last lines of a VM's serial console log (boot messages, kernel output).",
        ConsoleArguments,
        ConsoleTail,
        _console,
        read_only=True,
    ),
)

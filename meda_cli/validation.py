"""Building request models from CLI arguments, with pydantic errors as meda errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from meda_core.errors import InvalidRequest

if TYPE_CHECKING:  # imported by the command that builds a model, not by --help
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")


def build(model: type[M], **fields: Any) -> M:
    from pydantic import ValidationError

    from meda_core.inputs.validation import describe

    try:
        return model(**fields)
    except ValidationError as exc:
        message, problems = describe(exc.errors())
        raise InvalidRequest(message, errors=problems) from None

"""Building request models from CLI arguments, with pydantic errors as meda errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meda_core.errors import InvalidRequest
from meda_core.inputs.validation import describe

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    try:
        return model(**fields)
    except ValidationError as exc:
        message, problems = describe(exc.errors())
        raise InvalidRequest(message, errors=problems) from None

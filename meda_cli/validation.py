"""Building request models from CLI arguments, with pydantic errors as meda errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from meda_core.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidRequest(f"invalid request: {problems}") from None

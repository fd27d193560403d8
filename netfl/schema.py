"""Building blocks of the scenario schema that components share: sections and unit types.

Kept apart from netfl.scenario so that a protocol module can define its own
configuration section (netfl.scenario collects them from the registry) without
an import circle.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from netfl import units


def _unit(parser):
    def parse(value: object) -> object:
        try:
            return parser(value)
        except units.UnitError as exc:
            raise ValueError(str(exc)) from None

    return BeforeValidator(parse)


Seconds = Annotated[float, _unit(units.duration), Field(ge=0)]
PositiveSeconds = Annotated[float, _unit(units.duration), Field(gt=0)]
BitsPerSecond = Annotated[float, _unit(units.bitrate), Field(gt=0)]
Bytes = Annotated[float, _unit(units.size_bytes), Field(gt=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]
Node = int | str


def _takes_int(annotation: object) -> bool:
    """Whether a field's type is int, or int alongside None (not a float or a str)."""
    if annotation is int:
        return True
    args = typing.get_args(annotation)
    return int in args and not ({float, str} & set(args))


class Section(BaseModel):
    """A scenario section: unknown keys are errors, defaults are validated, numbers are
    finite (no .inf or .nan where a quantity is meant) and integers are not booleans."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_int(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(field.alias or name, data.get(name))
                if isinstance(value, bool) and _takes_int(field.annotation):
                    raise ValueError(f"{field.alias or name}: must be an integer, got {value}")
        return data

"""Building blocks of the scenario schema that components share: sections and unit types.

Kept apart from netfl.scenario so that a protocol module can define its own
configuration section (netfl.scenario collects them from the registry) without
an import circle.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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


class Section(BaseModel):
    """A scenario section: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

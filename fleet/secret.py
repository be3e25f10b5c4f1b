"""The type of a secret setting (pure): a ``SecretStr`` of at least 16 characters, refused with a message in
characters (pydantic's own speaks of "items") and without the value."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, SecretStr

SECRET_MIN = 16


def _long_enough(value: SecretStr) -> SecretStr:
    n = len(value.get_secret_value())
    if n < SECRET_MIN:
        raise ValueError(f"must be at least {SECRET_MIN} characters long (this one has {n})")
    return value


Secret = Annotated[SecretStr, AfterValidator(_long_enough)]

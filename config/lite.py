"""The validation engine of config/'s models (placeholder: pydantic's own names).

Every model module imports these names from here, never from pydantic.
"""

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

__all__ = [
    "BaseModel",
    "BeforeValidator",
    "ConfigDict",
    "Field",
    "PydanticCustomError",
    "ValidationError",
    "field_serializer",
    "field_validator",
    "model_serializer",
    "model_validator",
    "to_camel",
]

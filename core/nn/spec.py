"""Spec validation for the engine: every error names its path, and the same field
declarations produce the JSON Schema the API publishes (one source of truth, NumPy-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

REQUIRED = object()


class SpecError(ValueError):
    """A spec that cannot be built; `errors` is a list of {"path", "message"}."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


@dataclass(frozen=True)
class Field:
    """One field of a spec object: its kind, default and bounds."""

    kind: str  # int, float, bool, str, choice, int_list, object, list
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple = ()
    nullable: bool = False
    description: str = ""
    min_items: int | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any, path: str, errors: list) -> Any:
        if value is None and self.nullable:
            return None
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                return _err(errors, path, "must be a boolean")
            return value
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return _err(errors, path, f"must be {'an integer' if kind == 'int' else 'a number'}")
            if kind == "int" and (isinstance(value, float) and not value.is_integer()):
                return _err(errors, path, "must be an integer")
            if isinstance(value, float) and not math.isfinite(value):
                return _err(errors, path, "must be finite")
            value = int(value) if kind == "int" else float(value)
            return self._bounds(value, path, errors)
        if kind == "str":
            if not isinstance(value, str) or not value:
                return _err(errors, path, "must be a non-empty string")
            return value
        if kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                return _err(errors, path, f"must be one of {', '.join(sorted(self.choices))}")
            return value
        if kind == "int_list":
            if not isinstance(value, list) or not value:
                return _err(errors, path, "must be a non-empty list of integers")
            out = []
            lo = self._item_minimum
            for i, v in enumerate(value):
                if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                    return _err(errors, _join(path, i), f"must be an integer >= {lo:g}")
                out.append(v)
            if self.min_items and len(out) < self.min_items:
                return _err(errors, path, f"must have at least {self.min_items} items")
            return out
        if kind == "object":
            if not isinstance(value, dict):
                return _err(errors, path, "must be an object")
            return value
        if kind == "list":
            if not isinstance(value, list):
                return _err(errors, path, "must be a list")
            if self.min_items and len(value) < self.min_items:
                return _err(errors, path, f"must be a list of at least {self.min_items} items")
            return value
        raise AssertionError(f"unknown field kind {kind}")

    @property
    def _item_minimum(self) -> float:
        """int_list items default to >= 1 (shapes); an explicit minimum, even 0, wins."""
        return 1 if self.minimum is None else self.minimum

    def _bounds(self, value, path, errors):
        if self.minimum is not None:
            if self.exclusive_minimum and value <= self.minimum:
                return _err(errors, path, f"must be > {self.minimum:g}")
            if not self.exclusive_minimum and value < self.minimum:
                return _err(errors, path, f"must be >= {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            return _err(errors, path, f"must be <= {self.maximum:g}")
        return value

    def json_schema(self) -> dict:
        kind = self.kind
        if kind in ("int", "float"):
            schema: dict[str, Any] = {"type": "integer" if kind == "int" else "number"}
            if self.minimum is not None:
                key = "exclusiveMinimum" if self.exclusive_minimum else "minimum"
                schema[key] = self.minimum
            if self.maximum is not None:
                schema["maximum"] = self.maximum
        elif kind == "bool":
            schema = {"type": "boolean"}
        elif kind == "str":
            schema = {"type": "string", "minLength": 1}
        elif kind == "choice":
            schema = {"type": "string", "enum": sorted(self.choices)}
        elif kind == "int_list":
            schema = {"type": "array", "items": {"type": "integer", "minimum": self._item_minimum},
                      "minItems": self.min_items or 1}
        elif kind == "object":
            schema = {"type": "object"}
        else:
            schema = {"type": "array"}
            if self.min_items:
                schema["minItems"] = self.min_items
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        if self.default is not REQUIRED and self.default is not None:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


def _err(errors: list, path: str, message: str) -> None:
    errors.append({"path": path, "message": message})
    return None


def check_object(obj: Any, fields: dict[str, Field], path: str, errors: list,
                 ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check `obj` against `fields`; unknown keys are errors so typos never pass silently."""
    if not isinstance(obj, dict):
        _err(errors, path or "(root)", "must be an object")
        return {}
    out: dict[str, Any] = {}
    for key in obj:
        if key not in fields and key not in ignore:
            _err(errors, _join(path, key), "unknown field")
    for key, f in fields.items():
        p = _join(path, key)
        if key not in obj:
            if f.required:
                _err(errors, p, "is required")
            else:
                out[key] = f.default
            continue
        out[key] = f.check(obj[key], p, errors)
    return out


def object_schema(fields: dict[str, Field], extra: dict | None = None, **kw) -> dict:
    props = {k: f.json_schema() for k, f in fields.items()}
    props.update(extra or {})
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    required = [k for k, f in fields.items() if f.required]
    if required:
        schema["required"] = required
    schema.update(kw)
    return schema

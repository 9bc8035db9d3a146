"""JSON Schema for the `model` and `training` documents, produced from the same field
declarations that validate them (the API publishes these in its OpenAPI document)."""

from __future__ import annotations

from typing import Any

from .layers import LAYERS
from .layers.base import COMMON_FIELDS
from .network import MODEL_FIELDS
from .spec import object_schema
from .training import training_json_schema


def layer_schema(type_name: str) -> dict[str, Any]:
    cls = LAYERS[type_name]
    doc = cls.doc or (cls.__doc__ or "").strip().split("\n")[0]
    schema = object_schema({**COMMON_FIELDS, **cls.fields}, description=doc, title=type_name)
    schema["properties"]["type"] = {"const": type_name}
    if "layers" in schema["properties"]:  # composite blocks hold layers of any type (not expanded again)
        schema["properties"]["layers"] = {"type": "array", "minItems": 1,
                                          "items": {"type": "object", "required": ["type"],
                                                    "description": "a layer spec, as in model.layers"}}
    return schema


def layer_schemas() -> dict[str, dict[str, Any]]:
    """Every registered layer's schema, by type: what the model schema's layers may be."""
    return {t: layer_schema(t) for t in sorted(LAYERS)}


def model_json_schema() -> dict[str, Any]:
    """Self-contained (no $defs), so it can be embedded in other documents as it is."""
    layer_union = {"oneOf": list(layer_schemas().values())}
    return object_schema(MODEL_FIELDS, extra={"layers": {"type": "array", "minItems": 1, "items": layer_union}},
                         title="model", description="The network: input shape, layers in order, and the loss.")


__all__ = ["layer_schemas", "model_json_schema", "training_json_schema"]

"""Request envelopes (pydantic). The `model` and `training` documents inside them are checked
by the engine's own spec validation, which also publishes their JSON Schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import validation_error


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InlineDataset(Strict):
    features: list[Any] = Field(description="one row per sample; nested lists for images or sequences")
    targets: list[Any] = Field(description="class indices, class labels (strings), one-hot rows or values")
    feature_names: list[str] | None = None


class JobCreate(Strict):
    model: dict[str, Any] = Field(description="the network: input_shape, layers, loss")
    training: dict[str, Any] = Field(default_factory=dict, description="optimizer, epochs, batch_size, ...")
    dataset: InlineDataset


class PredictRequest(Strict):
    inputs: list[Any] | None = None
    instances: list[Any] | None = None


def parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error([
            {"path": ".".join(str(p) for p in e["loc"]) or "(body)",
             "message": "unknown field" if e["type"] == "extra_forbidden" else e["msg"]}
            for e in exc.errors(include_url=False)]) from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json_body() -> Any:
    """The request body as JSON: 415 unless it says JSON, 400 for NaN/Infinity literals,
    malformed or absurdly nested documents."""
    import json

    from flask import request

    from .errors import ApiError

    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type: application/json (got {request.mimetype or 'none'})")
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON document is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None

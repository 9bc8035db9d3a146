"""Request envelopes (pydantic). The `model` and `training` documents inside them are checked
by the engine's own spec validation, which also publishes their JSON Schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from core.nn.schema import model_json_schema, training_json_schema

from .datasets import MAX_NAME_CHARS
from .errors import ApiError, error_path, validation_error
from .limits import check_dataset_limits, settings

MAX_DATASET_NAME = 255  # the datasets.name column

ModelSpec = Annotated[dict[str, Any], WithJsonSchema(model_json_schema())]
TrainingSpec = Annotated[dict[str, Any], WithJsonSchema(training_json_schema())]
JobStatusName = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _first_row_size(row: Any) -> int:
    """Values in one sample, from the first element at each depth: a cheap estimate that a
    ragged row later fails anyway."""
    size = 1
    while isinstance(row, list):
        size *= len(row)
        row = row[0] if row else None
    return size


def _within_dataset_limits(n_rows: int, values_per_row: int) -> None:
    """The dataset limits, as a validation error at the field's own path (dataset.features in a
    job, features in POST /v1/datasets)."""
    try:
        check_dataset_limits(n_rows, values_per_row, "")
    except ApiError as exc:
        raise PydanticCustomError("dataset_limit", "{message}", {"message": exc.errors[0]["message"]}) from None


class InlineDataset(Strict):
    """The dataset limits are checked on the parsed lists (their lengths and the first row's
    size) before any array is built from them: ten million rows of [0] take gigabytes as arrays.
    In a job, the size of one sample is the spec's to name (model.input_shape, checked next),
    so here it only counts towards the total."""

    features: list[Any] = Field(description="one row per sample; nested lists for images or sequences")
    targets: list[Any] = Field(description="class indices, class labels (strings), one-hot rows or values")
    feature_names: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] | None = None
    _checks_sample_size: ClassVar[bool] = False

    @field_validator("features")
    @classmethod
    def _features_within_limits(cls, features: list[Any]) -> list[Any]:
        per_row = _first_row_size(features[0]) if features else 0
        if not cls._checks_sample_size:
            per_row = min(per_row, settings().max_sample_values)
        _within_dataset_limits(len(features), per_row)
        return features

    @field_validator("targets")
    @classmethod
    def _targets_within_limits(cls, targets: list[Any]) -> list[Any]:
        _within_dataset_limits(len(targets), 1)
        return targets


JOB_EXAMPLE = {
    "model": {"input_shape": [2], "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                             {"type": "dense", "units": 2, "activation": "softmax"}],
              "loss": "categorical_crossentropy"},
    "training": {"optimizer": {"type": "adam", "learning_rate": 0.05}, "epochs": 200, "batch_size": 4, "seed": 0},
    "dataset": {"features": [[0, 0], [0, 1], [1, 0], [1, 1]], "targets": [0, 1, 1, 0]},
}


class JobCreate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [JOB_EXAMPLE]})

    model: ModelSpec = Field(description="the network: input_shape, layers, loss")
    training: TrainingSpec = Field(default_factory=dict, description="optimizer, epochs, batch_size, ...")
    dataset: InlineDataset | None = Field(default=None, description="inline data; or give dataset_id")
    dataset_id: str | None = Field(default=None, description="a dataset stored with POST /v1/datasets")
    init_from: str | None = Field(default=None, description="fine-tune: start from this job's learned weights")
    freeze: list[str] | None = Field(default=None, description="with init_from: layer names not to train")


class Progress(BaseModel):
    epoch: int
    total_epochs: int


class JobLinks(BaseModel):
    self: str
    epochs: str
    weights: str
    predict: str
    diagnostics: str
    events: str


class JobOut(BaseModel):
    id: str
    status: JobStatusName
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: Progress
    eta_seconds: float | None = Field(description="estimated seconds left, while running")
    metrics: dict[str, float | None] | None = Field(description="the latest finished epoch's metrics, or the best "
                                                               "epoch's once early stopping restored its weights; "
                                                               "a metric is null where it overflowed (was not finite)")
    metrics_epoch: int | None = Field(description="the epoch whose numbers `metrics` holds (null before the first)")
    stop_reason: str | None = Field(description="completed, early_stopping, target_reached, cancelled, error")
    error: str | None
    attempts: int
    worker: str | None
    dataset_id: str
    init_from: str | None
    fine_tuned_from: str | None = Field(description="the init_from it was submitted with, kept if that job is deleted")
    freeze: list[str] | None
    retry_of: str | None
    model: dict[str, Any]
    training: dict[str, Any]
    links: JobLinks


class JobPage(BaseModel):
    jobs: list[JobOut]
    next: str | None = Field(description="pass as ?next= for the following page; null on the last page")


class JobGone(BaseModel):
    """The last `status` event of a stream whose job was deleted while it was followed."""

    id: str
    status: Literal["deleted"]


class JobListQuery(Strict):
    status: str | None = Field(default=None, description="comma-separated statuses")
    dataset_id: str | None = None
    created_after: str | None = Field(default=None, description="ISO 8601 timestamp")
    created_before: str | None = Field(default=None, description="ISO 8601 timestamp")
    limit: int = Field(default=50, ge=1, le=200)
    next: str | None = Field(default=None, description="the cursor from the previous page")


class EpochOut(BaseModel):
    """One finished epoch: its loss, its metrics (lr, accuracy or mae and r2, val_* ...), and the L2
    norms of each layer's gradient (averaged over the epoch's batches) and weights. A value is null
    where it overflowed (was not finite)."""

    model_config = ConfigDict(extra="allow")
    epoch: int
    loss: float
    duration: float
    grad_norms: dict[str, float | None]
    weight_norms: dict[str, float | None]


class EpochQuery(Strict):
    after: int = Field(default=0, ge=0, le=2**31 - 1, description="return epochs after this epoch number")
    limit: int = Field(default=1000, ge=1, le=10000)
    max_points: int | None = Field(default=None, ge=2, le=10000,
                                   description="the whole curve after `after` in at most this many epochs, "
                                               "keeping first and last; it replaces `limit` (no next page)")


class EventsQuery(Strict):
    after: int | None = Field(default=None, ge=0, le=2**31 - 1,
                              description="send only epochs after this one; a reconnecting "
                              "EventSource sends the same as its Last-Event-ID header, which is honoured too")


class EpochPage(BaseModel):
    job_id: str
    epochs: list[EpochOut]
    total: int = Field(description="how many epochs are recorded after `after`")
    downsampled: bool = Field(description="true when `max_points` thinned the history (first and last epoch kept)")
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page "
                                               "(and when downsampled)")


class LayerDiagnostics(BaseModel):
    layer: str
    frozen: bool = Field(description="frozen by fine-tuning: no gradient is computed, its grad_norms are null")
    grad_norms: list[float | None] = Field(description="null where the value overflowed (was not finite), or for a "
                                                       "frozen layer")
    weight_norms: list[float | None] = Field(description="null where the value overflowed (was not finite)")


DIAGNOSTICS_POINTS = 1000  # the epochs /diagnostics answers with by default


class DiagnosticsQuery(Strict):
    max_points: int = Field(default=DIAGNOSTICS_POINTS, ge=2, le=10000,
                            description="the norms of at most this many epochs, spread over the whole run with "
                                        "the first and last kept (as /epochs?max_points); the flags always "
                                        "read every epoch")


class Diagnostics(BaseModel):
    job_id: str
    epochs: list[int] = Field(description="the epochs the norms are given for: all of them, or a thinned "
                                          "selection (see `downsampled`)")
    total: int = Field(description="how many epochs are recorded; the flags read all of them")
    downsampled: bool = Field(description="true when the norms are given for fewer epochs than `total`")
    layers: list[LayerDiagnostics]
    flags: list[dict[str, str]] = Field(description="plain-language warnings; kind is vanishing_gradients, "
                                                    "no_gradient, exploding_gradients or large_gradients, each "
                                                    "with its layer, or diverged, for the whole run")


class WeightOut(BaseModel):
    name: str
    layer: str
    param: str
    dtype: str
    shape: list[int]
    values: Any


class WeightsOut(BaseModel):
    job_id: str
    status: JobStatusName
    weights: list[WeightOut]


class WeightsQuery(Strict):
    format: Literal["json", "npz"] = Field(default="json", description="json: up to a bound of values (422 "
                                           "response_too_large past it, with the count); npz: any size, sent one "
                                           "array at a time")


class PredictOut(BaseModel):
    predictions: list[Any]
    probabilities: list[Any] | None = None
    classes: list[Any] | None = Field(default=None, description="a classifier's classes: of each probability "
                                      "column (softmax), or the two of a one-unit sigmoid output, whose "
                                      "probability is the second's")
    job_id: str | None = None
    model: str | None = None
    version: int | None = None


class PredictRequest(Strict):
    inputs: list[Any] | None = Field(default=None, description="rows (or nested arrays) to predict")
    instances: list[Any] | None = Field(default=None, description="the same, TF Serving style")


# -- datasets ---------------------------------------------------------------------------------

TaskHint = Literal["classification", "regression", "labels"]
TASK_DESCRIPTION = ("whether numeric targets are classes: by default whole numbers >= 0 in one column and "
                    "one-hot rows are classes (the numbers are class indices), anything else is continuous; "
                    "class labels (strings) are always classes. `labels`: the numbers name the classes "
                    "(wine's 1, 2, 3), mapped to the output units in sorted order, and predictions answer "
                    "with them")


class DatasetJsonCreate(InlineDataset):
    """A dataset as JSON: the same `features` / `targets` / `feature_names` a job's inline dataset takes."""

    _checks_sample_size: ClassVar[bool] = True  # no spec here to bound a sample

    name: str | None = Field(default=None, min_length=1, max_length=MAX_DATASET_NAME)
    task: TaskHint | None = Field(default=None, description=TASK_DESCRIPTION)


class DatasetUploadParams(Strict):
    """Parameters of an upload, as query parameters or (multipart) form fields."""

    target: str | None = Field(default=None, max_length=MAX_NAME_CHARS,
                               description="CSV: the header name of the column holding the targets")
    name: str | None = Field(default=None, min_length=1, max_length=MAX_DATASET_NAME,
                             description="defaults to the uploaded file's name")
    task: TaskHint | None = Field(default=None, description=TASK_DESCRIPTION)


class DatasetLinks(BaseModel):
    self: str
    jobs: str = Field(description="the jobs trained on this dataset")


class DatasetOut(BaseModel):
    id: str
    name: str | None
    source: str = Field(description="json, csv, npy or npz (uploaded), or inline (sent with a job)")
    created_at: str
    n_samples: int
    shape: list[int] = Field(description="the features' shape, samples first")
    feature_shape: list[int] = Field(description="one sample's shape, e.g. [h, w, c] for images")
    dtype: str = Field(description="the features' dtype as stored")
    feature_names: list[str] | None
    target_kind: Literal["classes", "continuous", "unknown"]
    target_shape: list[int] = Field(description="one sample's target shape; [] for a class index or a value")
    target_dtype: str
    class_labels: list[Any] | None = Field(description="the original label of each class index, when targets "
                                                       "were labels; predictions answer with these")
    class_counts: dict[str, int] | None = Field(description="samples per class, by label")
    checksum: str = Field(description="SHA-256 over the arrays' dtypes, shapes and bytes, and the class "
                                      "labels the target indices stand for")
    links: DatasetLinks


class DatasetPage(BaseModel):
    datasets: list[DatasetOut]
    next: str | None = Field(description="pass as ?next= for the following page; null on the last page")


class DatasetListQuery(Strict):
    limit: int = Field(default=50, ge=1, le=200)
    next: str | None = Field(default=None, description="the cursor from the previous page")


def parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error([
            {"path": error_path(e["loc"]) or "(body)",
             "message": "unknown field" if e["type"] == "extra_forbidden" else e["msg"]}
            for e in exc.errors(include_url=False)]) from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class _Repeats(dict):
    """An object that gives a key twice (json keeps the last value), marked for the error:
    which of the values the client meant cannot be known, so the document is refused."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        seen: set[str] = set()
        self.key = next(k for k, _ in pairs if k in seen or seen.add(k))


def _nodes(value: Any) -> Iterator[tuple[Any, str]]:
    """Every object, list and string of a JSON document with its path, in document order; the
    numbers, which make up most of a dataset, are not visited."""
    stack = [(value, "")]
    while stack:
        v, p = stack.pop()
        yield v, p
        if isinstance(v, dict):
            stack.extend((item, f"{p}.{k}" if p else k) for k, item in reversed(v.items())
                         if isinstance(item, dict | list | str))
        elif isinstance(v, list):
            stack.extend((item, f"{p}[{i}]") for i, item in reversed(list(enumerate(v)))
                         if isinstance(item, dict | list | str))


def _repeated_key(value: Any) -> str:
    """The path of the first repeated key (looked for only when there is one)."""
    for v, p in _nodes(value):
        if isinstance(v, _Repeats):
            key = v.key or '""'
            return f"{p}.{key}" if p else key
    raise AssertionError("no repeated key")


def read_json_body() -> Any:
    """The request body as JSON: 415 unless it says JSON, 400 for NaN/Infinity literals, a key
    given twice in one object, malformed or absurdly nested documents; 422 naming the path for a
    string or key holding NUL or a lone surrogate, which no database text can store. The body's
    encoding is detected from its bytes (UTF-8, -16 or -32, RFC 8259); a charset parameter is not
    used."""
    import json

    from flask import g, request

    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"send Content-Type: application/json (got {request.mimetype or 'none'})")
    raw = whole_body()
    if len(raw) > LARGE_JSON_BYTES:
        hold_large_body_slot("this API process is reading as many large request bodies (over "
                             f"{LARGE_JSON_BYTES // 2**20} MB) as it may at once; send it again in a moment, or "
                             "upload large datasets as CSV or .npz (POST /v1/datasets), which take far less memory "
                             "than JSON")
    repeated = False

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeated
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        repeated = True
        return _Repeats(pairs)

    try:
        doc = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON document is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if repeated:
        path = _repeated_key(doc)
        raise ApiError(400, "invalid_json", f"{path}: the key is given more than once in its object",
                       errors=[{"path": path, "message": "the key is given more than once in its object"}])
    # PostgreSQL text cannot hold NUL. Looked for as an escape that is not itself escaped
    # ("\\u0000" is six characters of text), in the decoded text when the body is not UTF-8 (a
    # UTF-16 body hides it from a byte search)
    encoding = json.detect_encoding(raw)
    if encoding.startswith("utf-8"):
        has_nul, maybe_surrogate = _NUL_ESCAPE_BYTES.search(raw), _may_hold_lone_surrogate(raw)
        g.json_booleans = b"true" in raw or b"false" in raw  # see datasets.numeric_array
    else:
        # decoded as json.loads did: a lone surrogate in a UTF-16 body made the strict decode a 500
        text = raw.decode(encoding, "surrogatepass")
        has_nul, maybe_surrogate = _NUL_ESCAPE.search(text), _SURROGATE_TEXT.search(text)
        g.json_booleans = "true" in text or "false" in text
    if has_nul:
        path = _nul_path(doc)
        raise validation_error([{"path": path, "message": "must not contain NUL characters (\\u0000)"}])
    found = _surrogate_at(doc) if maybe_surrogate else None
    if found:
        path, char = found
        raise validation_error([{"path": path, "message": f"holds a lone UTF-16 surrogate (\\u{ord(char):04x}), "
                                                          "which is not a character and cannot be stored: send "
                                                          "the character itself, or both halves of its pair"}])
    return doc


# A JSON document takes 8-20 times its size once parsed (a Python float and a list slot per
# number): 60 MB of numbers peaked at 490 MB, short integers at over 1 GB. Bodies above this size
# are parsed a few at a time per process (a quarter of its threads, as predictions).
LARGE_JSON_BYTES = 8 * 2**20


def whole_body() -> bytes:
    """The request body, or 413: a chunked body (no Content-Length) is cut at the size limit
    rather than refused, so reaching the limit means more was sent."""
    from flask import current_app, request

    raw = request.get_data()
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise ApiError(413, "request_too_large", f"the request body exceeds {limit} bytes")
    return raw


def hold_large_body_slot(busy: str) -> None:
    """One of the process's slots for parsing or decoding a large body, held until the request
    ends (what it made lives that long; a request holds one at most), or a 503 saying `busy` at
    once: a request waiting for one held a web thread (six 48 MB uploads on four threads kept
    /livez waiting 16 s). Nothing was done, so the request can be sent again as it is; the
    Python client does that by itself."""
    from flask import current_app, g

    if g.get("large_body_slot") is not None:
        return
    slots = current_app.extensions["backprop"]["large_bodies"]
    if not slots.acquire(blocking=False):
        raise ApiError(503, "too_many_large_requests", busy, headers={"Retry-After": "2"})
    g.large_body_slot = slots


_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_NUL_ESCAPE_BYTES = re.compile(_NUL_ESCAPE.pattern.encode())


# A lone UTF-16 surrogate (U+D800-U+DFFF without its other half) is text no UTF-8 can hold, yet
# json.loads takes it from an escape ("\\ud800"), from its UTF-8-style bytes (ED A0 80) and from
# a UTF-16 body. Stored, it broke the job on SQLite ("'utf-8' codec can't encode") and kept labels
# that no client can read back: every string and key of every JSON body is checked here, once.
# These only say where one may be (a pair's escapes match too); _surrogate_at decides.
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LOW_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _may_hold_lone_surrogate(raw: bytes) -> bool:
    """For a UTF-8 body: False when every surrogate escape is a high half followed by its low
    half, as json.dumps writes any character beyond U+FFFF (an emoji), so that such a body is not
    walked string by string (2.45 s on 60 MB of numbers with one emoji label); otherwise
    _surrogate_at decides. An escape counts only after an even run of backslashes ("\\\\ud800"
    is text)."""
    pos = 0
    while m := _SURROGATE_BYTES.search(raw, pos):
        i = m.start()
        if raw[i] != ord("\\"):
            return True  # a surrogate's UTF-8-style bytes
        run = i
        while run and raw[run - 1] == ord("\\"):
            run -= 1
        if (i - run) % 2:  # this backslash is escaped: text, not an escape
            pos = i + 1
        elif raw[i + 3] in b"89abAB" and _LOW_SURROGATE_ESCAPE.match(raw, i + 6):
            pos = i + 12  # a pair: one character
        else:
            return True
    return False


def _escaped(text: str) -> str:
    """`text` with its surrogates written as escapes, fit for an error message."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _surrogate_at(value: Any) -> tuple[str, str] | None:
    """(the path, the surrogate) of the first string or key holding a lone surrogate: in the
    parsed document a pair is one character, so any surrogate left is alone."""
    for v, p in _nodes(value):
        if isinstance(v, str) and (m := _SURROGATE.search(v)):
            return p or "body", m.group()
        if isinstance(v, dict):
            for k in v:
                if m := _SURROGATE.search(k):
                    return _escaped(f"{p}.{k}" if p else k), m.group()
    return None


def _nul_path(value: Any) -> str:
    """The path of the first key or string holding a NUL (looked for only when there is one)."""
    for v, p in _nodes(value):
        if isinstance(v, str) and "\x00" in v:
            return p or "body"
        if isinstance(v, dict):
            for k in v:
                if "\x00" in k:
                    return (f"{p}.{k}" if p else k).replace("\x00", "\\0")
    return "body"


# --- models: the registry (app/models_api.py) ---

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ModelName = Annotated[str, Field(description="1-128 characters of A-Z a-z 0-9 _ . - (not `.` or `..`)",
                                 json_schema_extra={"pattern": MODEL_NAME_PATTERN})]
AliasName = Annotated[str, Field(description="1-64 characters of A-Z a-z 0-9 _ -; `latest` is reserved",
                                 json_schema_extra={"pattern": ALIAS_PATTERN})]


class ModelRegister(Strict):
    name: ModelName
    job_id: str = Field(description="a succeeded job of yours; it becomes the model's next version")
    aliases: list[AliasName] = Field(default_factory=list,
                                     description="aliases to point at the new version in the same step, "
                                                 "e.g. [\"production\"]; `latest` moves by itself")


class AliasSet(Strict):
    # strict: true or "2" is not a version (both were taken as 1 and 2)
    version: int = Field(ge=1, le=2**31 - 1, strict=True, description="an existing version of the model")


class ModelListQuery(Strict):
    limit: int = Field(default=50, ge=1, le=200)
    next: str | None = Field(default=None, description="the cursor from the previous page")


class ModelVersionLinks(BaseModel):
    self: str
    job: str
    predict: str


class ModelVersionOut(BaseModel):
    model: str
    version: int
    job_id: str
    created_at: str = Field(description="when the version was registered")
    aliases: list[str] = Field(description="aliases pointing at this version, `latest` included")
    job_status: JobStatusName
    metrics: dict[str, float | None] | None = Field(description="the job's final metrics (its last epoch's); "
                                                               "null where a value overflowed")
    links: ModelVersionLinks


class ModelLinks(BaseModel):
    self: str
    predict: str


class ModelSummary(BaseModel):
    name: str
    created_at: str
    latest_version: ModelVersionOut
    aliases: dict[str, int] = Field(description="alias -> version, `latest` first")
    links: ModelLinks


class ModelOut(BaseModel):
    name: str
    created_at: str
    latest_version: int
    aliases: dict[str, int] = Field(description="alias -> version, `latest` first")
    versions: list[ModelVersionOut] = Field(description="every version, oldest first")
    links: ModelLinks


class ModelPage(BaseModel):
    models: list[ModelSummary]
    next: str | None = Field(description="pass as ?next= for the following page; null on the last page")


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
    links: dict[str, str]

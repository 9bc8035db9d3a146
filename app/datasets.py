"""Turning JSON data into arrays, with errors that name the row and column at fault."""

from __future__ import annotations

import csv
import io
import math
import re
import struct
import zipfile
import zlib
from itertools import chain
from typing import Any

import numpy as np

from core.nn.casting import BeyondDtype, narrowed
from core.numbers import plain

from .errors import ApiError, validation_error
from .limits import check_dataset_limits, settings

# Class labels and feature names are stored with the dataset and echoed in its every
# description and prediction, so a name is a name, not a payload.
MAX_NAME_CHARS = 256


def _find_bad_cell(value: list, path: str) -> dict[str, str]:
    """Walk nested lists to the first ragged row or non-numeric cell; slow, only on errors."""
    def shape_of(v):
        return (len(v),) + shape_of(v[0]) if isinstance(v, list) and v else ()

    expected = shape_of(value)

    def walk(v, depth, p):
        if depth == len(expected):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return {"path": p, "message": f"must be a number, got {type(v).__name__} {v!r:.40}"}
            if isinstance(v, int) and not -2**63 <= v < 2**64:  # NumPy keeps such an int as an object
                return {"path": p, "message": f"a whole number of {len(str(abs(v)))} digits is out of range; "
                                              "write a large value as a float (it must stay finite)"}
            return None
        if not isinstance(v, list) or len(v) != expected[depth]:
            got = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
            return {"path": p, "message": f"ragged data: expected {expected[depth]} values, got {got}"}
        for i, item in enumerate(v):
            err = walk(item, depth + 1, f"{p}[{i}]")
            if err:
                return err
        return None

    return walk(value, 0, path) or {"path": path, "message": "must be a nested list of numbers"}


def _body_has_booleans() -> bool:
    """Whether this request's JSON body has a true or false anywhere (schemas.read_json_body
    notes it): only then are number arrays searched for one."""
    from flask import g, has_request_context

    return not has_request_context() or g.get("json_booleans", True)


def _holds_bool(value: list) -> bool:
    """np.array([1.5, True]) is [1.5, 1.0]: a boolean among numbers would be read as 1 or 0, where
    a list of booleans alone is refused."""
    if value and isinstance(value[0], list):
        return any(_holds_bool(row) for row in value)
    return any(type(v) is bool for v in value)


def numeric_array(value: Any, path: str, min_ndim: int = 1) -> np.ndarray:
    """A rectangular float64 array from nested JSON lists; 422 naming the offending cell."""
    if not isinstance(value, list) or not value:
        raise validation_error([{"path": path, "message": "must be a non-empty list"}])
    try:
        arr = np.array(value)
    except ValueError:  # inhomogeneous shape
        raise validation_error([_find_bad_cell(value, path)]) from None
    if arr.dtype.kind not in "iuf" or arr.ndim < min_ndim or (_body_has_booleans() and _holds_bool(value)):
        raise validation_error([_find_bad_cell(value, path)])
    arr = arr.astype(np.float64, copy=False)
    check_finite(arr, path)
    return arr


def check_finite(arr: np.ndarray, path: str) -> None:
    """422 naming the first NaN or infinity, as path[i][j]."""
    if arr.dtype.kind not in "fc":
        return
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        where = "".join(f"[{i}]" for i in bad[0])
        raise validation_error([{"path": f"{path}{where}", "message": "must be a finite number"}])


# Whole numbers from this on are not taken for class indices: float64 no longer holds every
# whole number there, and int64 holds none beyond 2**63 (1e20 would become -2**63).
CLASS_INDEX_LIMIT = 2**53


def _whole_below_limit(targets: np.ndarray) -> np.ndarray:
    return (np.mod(targets, 1) == 0) & (np.abs(targets) < CLASS_INDEX_LIMIT)


def as_model_dtype(arr: np.ndarray, dtype, path: str, name: str | None = None) -> np.ndarray:
    """`arr` in the model's dtype; 422 naming the first value that dtype cannot hold (1e39 in
    float32), which would otherwise become infinite and fail the job epochs later as a
    diverged loss. `name` names the array when `path` is not its own (a dataset_id)."""
    try:
        return narrowed(arr, dtype, name or path)
    except BeyondDtype as exc:
        cell = "".join(f"[{i}]" for i in exc.index)
        problem = (f"{exc.value:g} is beyond the range of the model's dtype {exc.dtype.name} (largest "
                   f"{exc.largest:.3g}); scale the data, or use dtype float64")
        error = ({"path": f"{path}{cell}", "message": problem} if name is None
                 else {"path": path, "message": f"{name}{cell}: {problem}"})
        raise validation_error([error]) from None


def parse_targets(value: Any, path: str) -> tuple[np.ndarray, list[Any] | None]:
    """Targets as numbers, or as class labels (strings) mapped to indices in sorted order."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        long = _first_too_long(value)
        if long is not None:
            raise validation_error([{"path": f"{path}[{long}]", "message": _too_long("a class label", value[long])}])
        _refuse_lone_surrogates(value, path)
        empty = next((i for i, v in enumerate(value) if not v.strip()), None)
        if empty is not None:  # as a CSV's empty cell: a missing value, not a class named ""
            raise validation_error([{"path": f"{path}[{empty}]", "message": "is empty (a missing value)"}])
        labels = sorted(set(value))
        index = {label: i for i, label in enumerate(labels)}
        return np.array([index[v] for v in value], dtype=np.int64), labels
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        i = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise validation_error([{"path": f"{path}[{i}]",
                                 "message": "mixes class labels (strings) with other values"}])
    arr = numeric_array(value, path)
    # whole numbers become class indices, but only where int64 holds them exactly
    if arr.ndim == 1 and np.all(_whole_below_limit(arr)):
        return arr.astype(np.int64), None
    return arr, None


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_lone_surrogates(names: list[str], path: str) -> None:
    """A lone UTF-16 surrogate is no character: UTF-8 cannot hold it, so no database can store it
    and no client read it back. A JSON body is checked whole as it is read (schemas); a .npy or
    .npz string array arrives here without that."""
    for i, name in enumerate(names):
        if m := _LONE_SURROGATE.search(name):
            raise validation_error([{"path": f"{path}[{i}]", "message": f"holds a lone UTF-16 surrogate "
                                     f"(\\u{ord(m.group()):04x}), which is not a character and cannot be stored"}])


def _first_too_long(names: list[str]) -> int | None:
    """The index of the first name longer than MAX_NAME_CHARS."""
    return next((i for i, name in enumerate(names) if len(name) > MAX_NAME_CHARS), None)


def _too_long(what: str, name: str) -> str:
    return f"{what} may have at most {MAX_NAME_CHARS} characters, this one has {len(name)}"


def check_names(names: list[str] | None, per_sample: int, path: str) -> None:
    """422 unless there is one name per value of a sample, or naming the first feature name that
    is empty, repeated or longer than MAX_NAME_CHARS: predict takes columns by these names (a
    CSV header with such names is refused alike)."""
    if names is not None and len(names) != per_sample:
        raise validation_error([{"path": path, "message": f"has {len(names)} names for {per_sample} values per "
                                                          "sample"}])
    long = _first_too_long(names or [])
    if long is not None:
        raise validation_error([{"path": f"{path}[{long}]", "message": _too_long("a feature name", names[long])}])
    _refuse_lone_surrogates(names or [], path)
    seen: set[str] = set()
    for i, name in enumerate(names or []):
        if not name.strip():
            raise validation_error([{"path": f"{path}[{i}]", "message": "is empty; every feature needs a name"}])
        if name in seen:
            raise validation_error([{"path": f"{path}[{i}]", "message": f"{name!r} repeats; names must differ"}])
        seen.add(name)


def check_dataset_fits(features: np.ndarray, targets: np.ndarray, input_shape: tuple[int, ...],
                       prefix: str = "dataset") -> None:
    if len(features) != len(targets):
        raise validation_error([{"path": f"{prefix}.targets",
                                 "message": f"has {len(targets)} values but features has {len(features)} rows"}])
    if features.shape[1:] != tuple(input_shape):
        raise validation_error([{
            "path": f"{prefix}.features",
            "message": f"each sample must have shape {list(input_shape)} (model.input_shape), "
                       f"got {list(features.shape[1:])}"}])


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"no {kind} with id {ident!r}")


def dataset_summary_fields(targets: np.ndarray, labels: list[Any] | None, classification: bool) -> dict[str, Any]:
    """What GET /v1/datasets shows about the targets: classes with their counts, or continuous."""
    if not classification and labels is None:
        return {"target_kind": "continuous", "class_counts": None}
    idx = targets if targets.ndim == 1 else targets.reshape(len(targets), -1).argmax(axis=1)
    values, counts = np.unique(idx, return_counts=True)
    names = [str(labels[int(v)]) if labels is not None else str(int(v)) for v in values]
    return {"target_kind": "classes", "class_counts": dict(zip(names, counts.tolist(), strict=True))}


# -- stored datasets: CSV and NumPy uploads, and the checks every dataset passes -------------

MAX_CLASSES = 1000
FEATURE_DTYPES = ("float32", "float64", "uint8")  # kept as uploaded; other numbers become float64
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# x and y in either case: np.savez(f, X=X, y=y) is scikit-learn's habit
NPZ_KEYS = {"features": "features", "x": "features", "X": "features", "targets": "targets", "y": "targets",
            "Y": "targets", "feature_names": "feature_names"}


def _cell_problem(cell: str) -> str | None:
    if not cell.strip():
        return "is empty (a missing value)"
    try:
        value = float(cell) if plain(cell) else None
    except ValueError:
        value = None
    if value is None:
        return f"{cell.strip()!r:.60} is not a number"
    return None if np.isfinite(value) else f"{cell.strip()!r} is not a finite number"


def _csv_error(line: int, column: str, message: str) -> ApiError:
    return validation_error([{"path": f"line {line}, column {column!r}", "message": message}])


def _check_header(header: list[str], line: int, target: str, part: str) -> None:
    for i, name in enumerate(header):
        if not name:
            raise validation_error([{"path": f"line {line}", "message": f"column {i + 1} has no name"}])
        if len(name) > MAX_NAME_CHARS:
            raise validation_error([{"path": f"line {line}", "message": f"column {i + 1}: "
                                     + _too_long("a column name", name)}])
        if name in header[:i]:
            raise validation_error([{"path": f"line {line}", "message": f"column name {name!r} repeats"}])
    if target not in header:
        shown = ", ".join(map(repr, header[:20])) + (", ..." if len(header) > 20 else "")
        raise validation_error([{"path": "target", "message": f"no column {target!r}; the columns are {shown}"}])
    if len(header) == 1:
        raise validation_error([{"path": part, "message": f"has no feature columns besides the target {target!r}"}])


def _row_budget(values_per_row: int, path: str) -> tuple[int, ApiError]:
    """How many rows a CSV may have, known from its header, and the 422 for one row more: the
    reader stops there rather than keep (and convert) rows that would be refused anyway."""
    check_dataset_limits(0, values_per_row, path)  # values per sample
    s = settings()
    by_values = s.max_dataset_values // values_per_row
    if by_values < s.max_rows:
        return by_values, validation_error([{"path": path, "message": f"holds more than {s.max_dataset_values} "
                                             f"values; the limit is {s.max_dataset_values}"}])
    return s.max_rows, validation_error([{"path": path, "message": f"has more than {s.max_rows} rows; the limit "
                                                                   f"is {s.max_rows}"}])


CSV_BLOCK_CELLS = 1 << 16  # feature cells converted to floats at a time (their strings then go)
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def parse_csv(text: str, target: str | None, task: str | None, part: str = "file"
              ) -> tuple[np.ndarray, np.ndarray, list[Any] | None, list[str]]:
    """A CSV with a header row -> (features float64 (n, columns), targets, class labels, feature
    names). Errors name the line number (the header is line 1) and the column. The header is
    checked, and the dataset limits applied, as the rows are read; feature cells become floats a
    block of rows at a time, since a cell kept as a Python string takes about 50 bytes (a 63 MB
    CSV of a thousand columns took 2.5 GB when all its rows were kept as strings)."""
    if not target:
        raise validation_error([{"path": "target", "message": "name the CSV column that holds the targets "
                                                              "(?target=COLUMN, or a `target` form field)"}])
    # Lines as io.StringIO(newline="") gives them (ended by \n, \r or \r\n, kept), without its
    # copy of the text at 4 bytes a character; a stray quote is an error
    reader = csv.reader((m.group() for m in _CSV_LINE.finditer(text)), strict=True)
    header: list[str] | None = None
    x = np.empty((0, 0))  # features, converted, in rows of an array sized by the text's line count
    block: list[list[str]] = []  # features, still text
    raw: list[str] = []  # the target column, as text: class labels or numbers
    lines: list[int] = []  # each row's line number, for errors
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header, header_line = [cell.strip() for cell in row], reader.line_num
                _check_header(header, header_line, target, part)
                max_rows, too_many = _row_budget(len(header) - 1, "features")
                t = header.index(target)
                names = [name for i, name in enumerate(header) if i != t]
                rows_per_block = max(1, CSV_BLOCK_CELLS // len(names))
                # at most one row per line end (\n, \r or \r\n, mixed in one file as they may be)
                line_ends = text.count("\n") + text.count("\r") - text.count("\r\n")
                hold_slot_to_decode(min(max_rows, line_ends) * len(names) * 8)  # the float64 features
                x = np.empty((min(max_rows, line_ends), len(names)))
                continue
            if len(row) != len(header):
                raise validation_error([{"path": f"line {reader.line_num}", "message":
                                         f"ragged row: has {len(row)} values, the header (line {header_line}) "
                                         f"has {len(header)} columns"}])
            if len(lines) == max_rows:
                raise too_many
            raw.append(row[t].strip())
            del row[t]
            block.append(row)
            lines.append(reader.line_num)
            if len(block) == rows_per_block:
                x[len(lines) - len(block):len(lines)] = _csv_floats(block, lines[-len(block):], names)
                block = []
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):  # it swallowed every line after its opening quote
            start = (lines[-1] if lines else header_line if header is not None else 0) + 1
            raise validation_error([{"path": f"line {start}", "message": "not valid CSV: a quoted value that "
                                     "starts on this line or the next ones is never closed"}]) from None
        raise validation_error([{"path": f"line {reader.line_num}", "message": f"not valid CSV: {exc}"}]) from None
    if header is None:
        raise validation_error([{"path": part, "message": "is empty: expected a header row and data rows"}])
    if not lines:
        raise validation_error([{"path": part, "message": "has a header but no data rows"}])
    if block:
        x[len(lines) - len(block):len(lines)] = _csv_floats(block, lines[-len(block):], names)
    x = x[:len(lines)] if len(lines) > len(x) // 2 else x[:len(lines)].copy()  # blank lines or quoted newlines
    numbers = []
    for r, cell in enumerate(raw):
        if not cell:
            raise _csv_error(lines[r], target, "is empty (a missing value)")
        try:
            numbers.append(float(cell) if plain(cell) else None)
        except ValueError:
            numbers.append(None)
    words = [r for r, v in enumerate(numbers) if v is None]
    if not words:
        y = np.array(numbers, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(y))
        if len(bad):
            raise _csv_error(lines[bad[0]], target, f"{raw[bad[0]]!r} is not a finite number")
        i = _first_not_class_index(y) if task == "classification" else None
        if i is not None:  # checked again by prepare_dataset, which can only name the index
            raise _csv_error(lines[i], target, f"{raw[i]!r} is not a class index (a whole number >= 0 and below "
                                               "2**53); task=classification, or task=labels for numbers that "
                                               "name classes")
        return x, y, None, names
    if task == "regression":
        raise _csv_error(lines[words[0]], target, f"{raw[words[0]]!r:.60} is not a number (task=regression)")
    long = _first_too_long(raw)  # checked here too, to name its line
    if long is not None:
        raise _csv_error(lines[long], target, _too_long("a class label", raw[long]))
    y, labels = parse_targets(raw, target)  # class labels, e.g. species names
    return x, y, labels, names


def _csv_floats(cells: list[list[str]], lines: list[int], names: list[str]) -> np.ndarray:
    """A block of feature cells as float64; the first cell that is not a finite number named."""
    try:
        x = np.array(cells, dtype=np.float64) if plain("".join(chain.from_iterable(cells))) else None
    except ValueError:  # find the first bad cell, the slow way
        x = None
    if x is None or not np.isfinite(x).all():
        for r, row in enumerate(cells):
            for j, cell in enumerate(row):
                problem = _cell_problem(cell)
                if problem:
                    raise _csv_error(lines[r], names[j], problem)
        x = np.array([[float(cell) for cell in row] for row in cells], dtype=np.float64)
    return x


def _npy_problem(path: str, message: str) -> ApiError:
    return validation_error([{"path": path, "message": message}])


def _npy_header(f, path: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype from a .npy header, reading nothing past it. Object arrays (which
    would need unpickling) and other non-numeric dtypes are refused here."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    except (ValueError, EOFError, SyntaxError) as exc:
        raise _npy_problem(path, f"not a valid .npy array: {exc}") from None
    if dtype.hasobject:
        raise _npy_problem(path, "holds Python objects (dtype=object), which are refused and never unpickled; "
                                 "send numeric arrays (class labels may be a string array)")
    if dtype.kind not in "biufU" or dtype.fields is not None or dtype.subdtype is not None:
        raise _npy_problem(path, f"has dtype {dtype}; send numbers (or, for targets, strings)")
    return shape, dtype


def check_array_limits(shape: tuple[int, ...], dtype: np.dtype, key: str, path: str) -> None:
    """The dataset limits on an array's header, before its data is read or converted: an .npz
    of a few hundred KB can inflate to millions of rows."""
    if key == "features" and dtype.kind not in "biuf":
        raise _npy_problem(path, f"must be numbers, got dtype {dtype}")
    if key in ("features", "targets") and shape:
        check_dataset_limits(shape[0], math.prod(shape[1:]), path)
    if key == "feature_names" and shape and shape[0] > settings().max_sample_values:
        raise _npy_problem(path, f"has {shape[0]} names; one sample may hold at most "
                                 f"{settings().max_sample_values} values")


def load_npy(data: bytes, path: str, key: str | None = None) -> np.ndarray:
    """One .npy array. The header is checked before anything is read (with the dataset limits
    when `key` says which array it is), and its shape must match the bytes that follow. Read
    with allow_pickle=False regardless."""
    f = io.BytesIO(data)
    shape, dtype = _npy_header(f, path)
    if key is not None:
        check_array_limits(shape, dtype, key, path)
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - f.tell()
    if expected != actual:
        raise _npy_problem(path, f"is truncated or corrupt: its header promises shape {list(shape)} of {dtype} "
                                 f"({expected} bytes), the file holds {actual} bytes")
    f.seek(0)
    try:
        return np.load(f, allow_pickle=False)
    except ValueError as exc:
        raise _npy_problem(path, f"not a valid .npy array: {exc}") from None


def hold_slot_to_decode(decoded_bytes: int) -> None:
    """An upload that decodes to many bytes (a 265 KB .npz of zeros to 256 MB of arrays, a CSV to
    8 bytes a cell) takes one of the slots of large JSON bodies (schemas.hold_large_body_slot), or
    is a 503 at once: six such uploads at once took a web process to 3.7 GB. Judged from the
    decoded size, never the wire size; a request holds at most one slot."""
    from .schemas import LARGE_JSON_BYTES, hold_large_body_slot  # schemas imports this module

    if decoded_bytes > LARGE_JSON_BYTES:
        hold_large_body_slot("this API process is decoding as many large request bodies and datasets as it may "
                             f"at once (this one holds {decoded_bytes} bytes of data); send it again in a moment")


# -- .npz members, inflated by hand: zipfile trusts the sizes the zip's directory declares, and
# inflates bzip2 and LZMA members whole, deflate ones up to 1 GiB a read before cutting them to
# that size (a 1.5 KB .npz took 3 GB). Here no member yields more than the size it declares,
# plus one byte to tell that it holds more.

NPZ_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez and np.savez_compressed write
ZIP_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... file name and extra field lengths
ZIP_ENCRYPTED = 0x1
INFLATE_CHUNK = 1 << 20  # bytes inflated per zlib call, and compressed bytes fed at a time
# a .npy header: magic, version, length and NumPy's at most 10,000 bytes of dict
NPY_HEADER_BYTES = 1 << 16


def _member_problem(part: str, info: zipfile.ZipInfo, message: str) -> ApiError:
    return _npy_problem(part, f"{info.filename!r} {message}")


def _compressed_bytes(data: bytes, info: zipfile.ZipInfo, part: str) -> memoryview:
    """A member's compressed bytes, found through its local header, without copying them."""
    start = info.header_offset
    header = data[start:start + ZIP_LOCAL_HEADER.size] if start >= 0 else b""
    if len(header) < ZIP_LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
        raise _member_problem(part, info, "is not where the zip's directory says (no local header there)")
    *_, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(header)
    start += ZIP_LOCAL_HEADER.size + name_length + extra_length
    return memoryview(data)[start:start + info.compress_size]


def _inflate(data: bytes, info: zipfile.ZipInfo, part: str, upto: int) -> bytes:
    """At most `upto` bytes of a member's content, and fewer only where its data ends: deflate
    is inflated INFLATE_CHUNK at a time with zlib's max_length, never past `upto`."""
    compressed = _compressed_bytes(data, info, part)
    if info.compress_type == zipfile.ZIP_STORED:
        return bytes(compressed[:upto])
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # a zip holds raw deflate streams
    out = bytearray()
    try:
        for pos in range(0, len(compressed), INFLATE_CHUNK):
            pending = compressed[pos:pos + INFLATE_CHUNK]
            while len(out) < upto and not inflater.eof:
                room = min(INFLATE_CHUNK, upto - len(out))
                piece = inflater.decompress(pending, room)
                out += piece
                pending = inflater.unconsumed_tail
                if not pending and len(piece) < room:
                    break  # this input is used up; zlib holds no more output for it
            if len(out) >= upto or inflater.eof:
                break
    except zlib.error as exc:
        raise _member_problem(part, info, f"cannot be inflated: {exc}") from None
    if len(out) < upto and not inflater.eof:
        raise _member_problem(part, info, "is truncated: its compressed data ends before its deflate stream does")
    return bytes(out)


def read_member(data: bytes, info: zipfile.ZipInfo, part: str) -> bytes:
    """A member's whole content, which must be the size and CRC the zip's directory declares
    (the limits were checked against that size); at most one byte more is ever inflated."""
    content = _inflate(data, info, part, info.file_size + 1)
    if len(content) > info.file_size:
        raise _member_problem(part, info, f"holds more than the {info.file_size} bytes the zip's directory "
                                          "declares for it")
    if len(content) < info.file_size:
        raise _member_problem(part, info, f"holds {len(content)} bytes, not the {info.file_size} the zip's "
                                          "directory declares for it")
    if zlib.crc32(content) != info.CRC:
        raise _member_problem(part, info, "is corrupt: its CRC does not match the zip's directory")
    return content


def load_npz(data: bytes, max_bytes: int | None, part: str = "file") -> dict[str, np.ndarray]:
    """A dataset .npz: `features` and `targets` (or `x`/`X` and `y`), optionally `feature_names`.
    Uncompressed sizes are checked against `max_bytes`, and each array's header against the
    dataset limits, before any array is inflated; no member inflates past its declared size,
    and only stored and deflate members are read."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise _npy_problem(part, f"not a valid .npz (zip) file: {exc}") from None
    with zf:
        infos = zf.infolist()
    found: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        key = NPZ_KEYS.get(name)
        if key is None or not info.filename.endswith(".npy"):
            raise _npy_problem(part, f"holds {info.filename!r}; a dataset .npz holds the arrays `features` "
                                     "and `targets` (or `x`/`X` and `y`), optionally `feature_names`")
        if key in found:
            raise _npy_problem(part, f"holds both {found[key].filename!r} and {info.filename!r}")
        if info.compress_type not in NPZ_METHODS:
            method = ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise _member_problem(part, info, f"is compressed with {method}; a .npz member must be stored or "
                                              "deflate-compressed (as np.savez and np.savez_compressed write them)")
        if info.flag_bits & ZIP_ENCRYPTED:
            raise _member_problem(part, info, "is encrypted; send it unencrypted")
        found[key] = info
    for key in ("features", "targets"):
        if key not in found:
            raise _npy_problem(part, f"has no `{key}` array (found: {sorted(i.filename for i in infos)})")
    total = sum(info.file_size for info in infos)
    if max_bytes is not None and total > max_bytes:
        raise ApiError(413, "request_too_large",
                       f"{part}: the arrays take {total} bytes uncompressed, more than the {max_bytes} allowed")
    for key, info in found.items():  # only the headers: at most NPY_HEADER_BYTES inflated each
        head = _inflate(data, info, part, min(info.file_size, NPY_HEADER_BYTES))
        shape, dtype = _npy_header(io.BytesIO(head), info.filename.removesuffix(".npy"))
        check_array_limits(shape, dtype, key, key)
    hold_slot_to_decode(total)
    return {key: load_npy(read_member(data, info, part), info.filename.removesuffix(".npy"))
            for key, info in found.items()}


def file_kind(data: bytes) -> str:
    """npy, npz or csv, from the first bytes (never from the file name)."""
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(ZIP_MAGIC):
        return "npz"
    return "csv"


def features_array(arr: np.ndarray, path: str) -> np.ndarray:
    """Features as stored: (n, *sample_shape), float32/float64/uint8 kept, other numbers float64."""
    if arr.dtype.kind not in "biuf":
        raise _npy_problem(path, f"must be numbers, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise _npy_problem(path, f"needs one row per sample, shape (n, features...), got shape {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise _npy_problem(path, "is empty: no samples")
    if arr[0].size == 0:
        raise _npy_problem(path, f"samples have no values (shape {list(arr.shape)})")
    keep = np.dtype(arr.dtype.name) if arr.dtype.name in FEATURE_DTYPES else np.dtype(np.float64)
    arr = np.ascontiguousarray(arr.astype(keep, copy=False))  # also makes the byte order native
    check_finite(arr, path)
    return arr


def targets_array(arr: np.ndarray, path: str) -> tuple[np.ndarray, list[Any] | None]:
    """Targets from a NumPy array: numbers, or a 1-D string array of class labels."""
    if arr.ndim == 0:
        raise _npy_problem(path, "needs one value per sample, got a scalar")
    if arr.dtype.kind == "U":
        if arr.ndim != 1:
            raise _npy_problem(path, f"class labels must be one string per sample, got shape {list(arr.shape)}")
        if not len(arr):
            raise _npy_problem(path, "is empty: no samples")
        return parse_targets(arr.tolist(), path)
    if arr.dtype.kind not in "biuf":
        raise _npy_problem(path, f"must be numbers or class labels (strings), got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        arr = arr.astype(np.dtype(arr.dtype.name) if arr.dtype.name in ("float32", "float64") else np.float64)
        check_finite(arr, path)
        return arr, None
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        return arr.astype(np.float64), None  # int64 would wrap these round to negative numbers
    return arr.astype(np.int64), None


def _first_not_class_index(targets: np.ndarray) -> int | None:
    bad = np.flatnonzero(~_whole_below_limit(targets) | (targets < 0))
    return int(bad[0]) if len(bad) else None


def check_class_count(idx: np.ndarray, labels: list[Any] | None, path: str, suggest_regression: bool = False) -> None:
    """Classes given as indices: at least two of them (one is a wrong column more often than a
    classifier), at most MAX_CLASSES."""
    found = np.unique(idx)
    if len(found) < 2:
        only = labels[int(found[0])] if labels is not None else int(found[0])
        hint = " (if these are numbers to predict, pass task=regression)" if suggest_regression else ""
        raise _npy_problem(path, f"only one class ({only!r}) in {len(idx)} samples; a classifier needs at "
                                 f"least two{hint}")
    if len(found) > MAX_CLASSES:
        hint = "; for numbers to predict, pass task=regression" if suggest_regression else ""
        raise _npy_problem(path, f"{len(found)} distinct classes, more than {MAX_CLASSES}{hint}")


def _numbers_as_labels(targets: np.ndarray, path: str) -> tuple[np.ndarray, list[Any]]:
    """task=labels: numbers that name classes (wine's 1, 2, 3) become class labels, mapped to the
    output units in sorted order as strings are, and predictions answer with them. Without it
    whole numbers are class indices: 1..3 needed four output units, one for a class 0 never seen."""
    if targets.ndim != 1:
        raise _npy_problem(path, f"shape {list(targets.shape)}: task=labels needs one target per sample")
    if targets.dtype.kind == "f":
        if not np.isfinite(targets).all():
            i = int(np.flatnonzero(~np.isfinite(targets))[0])
            raise _npy_problem(f"{path}[{i}]", f"{targets[i].item()!r} is not a finite number")
        # a float holds every whole number only below 2**53: beyond, two labels sent (JSON's
        # 9007199254740993 and ...992) would arrive as one
        big = np.flatnonzero((np.mod(targets, 1) == 0) & (np.abs(targets) >= CLASS_INDEX_LIMIT))
        if len(big):
            raise _npy_problem(f"{path}[{big[0]}]", f"{targets[big[0]].item():g} is too large to name a class "
                                                    "exactly (whole numbers below 2**53); send labels as strings")
    values, idx = np.unique(targets, return_inverse=True)
    return idx.reshape(-1).astype(np.int64), [_label(v) for v in values]


def _label(v: np.generic) -> Any:
    """A number as it was sent: a whole number as an int (exact: float32 123456792 too), a
    float32 0.1 as 0.1 (its shortest decimal, not 0.10000000149011612)."""
    if v.dtype.kind in "biu" or float(v).is_integer():
        return int(v)
    return float(str(v))


def prepare_dataset(features: np.ndarray, targets: np.ndarray, labels: list[Any] | None,
                    feature_names: list[str] | None, task: str | None,
                    paths: tuple[str, str] = ("features", "targets")) -> dict[str, Any]:
    """The checks every stored dataset passes, and the keyword arguments for store.create_dataset.

    Targets are classes when they are class labels (strings), one-hot rows, or whole numbers
    >= 0 in one column, unless task="regression"; task="classification" insists on one of those;
    task="labels" makes numbers class labels."""
    fpath, tpath = paths
    check_dataset_limits(len(features), int(features[0].size) if len(features) else 0, fpath)
    if len(features) != len(targets):
        raise _npy_problem(tpath, f"has {len(targets)} values but {fpath} has {len(features)} rows")
    check_names(feature_names, int(features[0].size), "feature_names")
    if labels is None and task == "labels":
        targets, labels = _numbers_as_labels(targets, tpath)
    if labels is not None:
        if task == "regression":
            raise _npy_problem(tpath, "holds class labels (strings); task=regression needs numbers")
        classes = True
    else:
        integral = targets.dtype.kind in "iub" or bool(np.all(_whole_below_limit(targets)))
        one_hot = (targets.ndim == 2 and targets.shape[1] > 1 and bool(np.all((targets == 0) | (targets == 1)))
                   and bool(np.all(targets.sum(axis=1) == 1)))
        indices = targets.ndim == 1 and integral and targets.min() >= 0
        if task == "regression":
            classes = False
        elif task == "classification":
            if targets.ndim == 1 and not indices:
                i = _first_not_class_index(targets)
                raise _npy_problem(f"{tpath}[{i}]", f"{targets[i].item()!r} is not a class index (a whole number "
                                                    f">= 0 and below 2**53); task=classification")
            if targets.ndim != 1 and not one_hot:
                raise _npy_problem(tpath, f"shape {list(targets.shape)}: task=classification needs class indices, "
                                          "class labels or one-hot rows")
            classes = True
        else:
            classes = indices or one_hot
        if classes and targets.ndim == 1:
            targets = targets.astype(np.int64)
        elif not classes and targets.dtype.kind != "f":
            targets = targets.astype(np.float64)
    if classes:
        check_class_count(targets if targets.ndim == 1 else targets.argmax(axis=1), labels, tpath,
                          suggest_regression=labels is None and not task)
    return {"features": features, "targets": targets, "feature_names": feature_names, "class_labels": labels,
            **dataset_summary_fields(targets, labels, classes)}

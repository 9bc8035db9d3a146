""".npz uploads whose zip directory lies: a member whose compressed stream holds far more than
the size its directory entry declares (with a valid CRC of the real part), members compressed
with bzip2 or LZMA (which zipfile inflated whole, without bound), members shorter than
declared. Each is a 4xx naming the member, answered quickly and in bounded memory; the zips are
written by hand, since zipfile itself would never write such a lie."""

from __future__ import annotations

import bz2
import io
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

PROBLEM = "application/problem+json"
MB = 2**20


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


FEATURES = npy(np.arange(16, dtype=np.float64).reshape(8, 2))  # 128 bytes of header, 128 of data
TARGETS = npy(np.arange(8) % 2)


def crafted_npz(*members: tuple[str, int, bytes, bytes]) -> bytes:
    """A zip from (name, method, content its directory declares, compressed stream) members:
    the local headers and the central directory declare the content's size and CRC, whatever
    the stream holds."""
    body, directory = b"", b""
    for name, method, declared, stream in members:
        raw_name, crc = name.encode(), zlib.crc32(declared)
        sizes = (crc, len(stream), len(declared), len(raw_name))
        directory += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, 20, 0, 0, method, 0, 0x21, *sizes,
                                 0, 0, 0, 0, 0, len(body)) + raw_name
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, *sizes, 0) + raw_name + stream
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + end


def deflated(content: bytes, zeros_mb: int = 0) -> bytes:
    """A raw deflate stream of `content` then `zeros_mb` MB of zeros, built in milliseconds: after
    a full flush the compressor starts afresh, so every MB of zeros compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(content) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(MB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(bytes(MB)) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    return head + block * zeros_mb + compressor.flush()


def bzip2ed(content: bytes, zeros_mb: int) -> bytes:
    compressor = bz2.BZ2Compressor(9)
    parts = [compressor.compress(content)] + [compressor.compress(bytes(MB)) for _ in range(zeros_mb)]
    return b"".join(parts) + compressor.flush()


def post(client, data: bytes):
    """The upload's response, its time and the peak of memory allocated while answering it."""
    # encoded here: the test client would spool a body over 500 KB to a file it never closes
    boundary, body = encode_multipart({"file": FileStorage(io.BytesIO(data), "bomb.npz")})
    tracemalloc.start()
    started = time.monotonic()
    try:
        resp = client.post("/v1/datasets", data=body, content_type=f"multipart/form-data; boundary={boundary}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return resp, time.monotonic() - started, peak


def refused(resp, *fragments: str) -> str:
    assert resp.status_code == 422, resp.get_json()
    assert resp.mimetype == PROBLEM
    error = resp.get_json()["errors"][0]
    assert error["path"] == "file", error
    for fragment in fragments:
        assert fragment in error["message"], error
    return error["message"]


def test_a_zip_written_by_hand_is_a_valid_npz(client):
    """The crafting itself: told the truth, it is an .npz like any other."""
    data = crafted_npz(("features.npy", zipfile.ZIP_DEFLATED, FEATURES, deflated(FEATURES)),
                       ("targets.npy", zipfile.ZIP_STORED, TARGETS, TARGETS))
    with np.load(io.BytesIO(data)) as arrays:
        assert arrays["features"].shape == (8, 2)
    resp = client.post("/v1/datasets", data={"file": (io.BytesIO(data), "d.npz")}, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["shape"] == [8, 2]


def test_a_deflate_member_holding_far_more_than_it_declares_is_refused_unread(client):
    """256 bytes declared, with their CRC, then 512 MB of zeros in the same stream: zipfile
    inflated all of it in one read (the web process +2 GB for 1.5 GB) before cutting it to the
    declared size, and the upload was stored. Now at most one byte past the declared size is
    inflated."""
    data = crafted_npz(("features.npy", zipfile.ZIP_DEFLATED, FEATURES, deflated(FEATURES, zeros_mb=512)),
                       ("targets.npy", zipfile.ZIP_STORED, TARGETS, TARGETS))
    assert len(data) < MB
    resp, seconds, peak = post(client, data)
    refused(resp, "'features.npy'", f"holds more than the {len(FEATURES)} bytes the zip's directory declares")
    assert peak < 32 * MB, f"{peak / MB:.0f} MB allocated to refuse it"
    assert seconds < 10


def test_a_bzip2_bomb_is_refused_before_anything_is_inflated(client):
    """bzip2 and LZMA members were inflated whole, the header read included (1,541 bytes: 17.8 s
    and 3 GB). np.savez writes neither, so they are refused by their method alone."""
    data = crafted_npz(("features.npy", zipfile.ZIP_BZIP2, FEATURES, bzip2ed(FEATURES, zeros_mb=256)),
                       ("targets.npy", zipfile.ZIP_STORED, TARGETS, TARGETS))
    assert len(data) < 4096
    resp, seconds, peak = post(client, data)
    refused(resp, "'features.npy'", "compressed with bzip2", "stored or deflate")
    assert peak < 32 * MB, f"{peak / MB:.0f} MB allocated to refuse it"
    assert seconds < 10


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")],
                         ids=["bzip2", "lzma"])
def test_npz_members_compressed_with_bzip2_or_lzma_are_refused_naming_the_member_and_method(client, method, name):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", FEATURES, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("y.npy", TARGETS, compress_type=method)
    resp, _, _ = post(client, buf.getvalue())
    assert refused(resp) == (f"'y.npy' is compressed with {name}; a .npz member must be stored or "
                             "deflate-compressed (as np.savez and np.savez_compressed write them)")


@pytest.mark.parametrize("method, stream, fragment", [
    pytest.param(zipfile.ZIP_STORED, FEATURES + bytes(1000), "holds more than the 256 bytes", id="stored-longer"),
    pytest.param(zipfile.ZIP_STORED, FEATURES[:-16], "holds 240 bytes, not the 256", id="stored-shorter"),
    pytest.param(zipfile.ZIP_DEFLATED, deflated(FEATURES[:-16]), "holds 240 bytes, not the 256", id="deflate-shorter"),
    pytest.param(zipfile.ZIP_DEFLATED, deflated(FEATURES)[:-40], "is truncated", id="deflate-cut-short"),
    pytest.param(zipfile.ZIP_DEFLATED, deflated(FEATURES[:-8] + bytes(8)), "CRC does not match", id="deflate-altered"),
])
def test_a_member_whose_content_is_not_what_its_directory_declares_is_refused(client, method, stream, fragment):
    """zipfile cut a longer member to the declared size and took it; here its real size must be
    the declared one, which the limits were checked against."""
    features = ("features.npy", method, FEATURES, stream)
    resp, _, _ = post(client, crafted_npz(features, ("targets.npy", zipfile.ZIP_STORED, TARGETS, TARGETS)))
    refused(resp, "'features.npy'", fragment)


def test_a_zip_streamed_with_data_descriptors_is_read(client):
    """A zip written to a pipe has its sizes after each member's data, not in its local header:
    the sizes are taken from the central directory."""

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.written = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.written += b
            return len(b)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in (("features.npy", FEATURES), ("targets.npy", TARGETS)):
            with zf.open(name, "w") as member:
                member.write(content)
    data = bytes(pipe.written)
    assert zipfile.ZipFile(io.BytesIO(data)).infolist()[0].flag_bits & 0x08  # a data descriptor
    resp, _, _ = post(client, data)
    assert resp.status_code == 201, resp.get_json()


def test_npz_from_numpy_are_read_as_before(client):
    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    y = np.arange(300) % 3
    for save in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        save(buf, features=x, targets=y, feature_names=np.array(list("abcde")))
        resp, _, _ = post(client, buf.getvalue())
        body = resp.get_json()
        assert resp.status_code == 201, body
        assert body["shape"] == [300, 5] and body["dtype"] == "float32" and body["feature_names"] == list("abcde")
        assert body["class_counts"] == {"0": 100, "1": 100, "2": 100}

"""File formats read in-process: IDX, NumPy-only pickles, Unix .Z, CIFAR binary tarballs, ISOLET.

Every test writes its files in the real formats; loaders find them in a temporary cache whose
checksums are patched in, so nothing touches the network.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evosparse.data import cifar, isolet
from evosparse.data.idx import IDX_TYPES, parse_idx, read_idx
from evosparse.data.safe_pickle import load_numpy_pickle
from evosparse.data.unix_compress import decompress
from evosparse.errors import DataError
from support import no_network  # noqa: E402, F401  (the fixture, used through pytestmark)

pytestmark = pytest.mark.usefixtures("no_network")

# --- IDX --------------------------------------------------------------------------------------


def idx_bytes(values: np.ndarray, type_code: int) -> bytes:
    """Encode ``values`` as an IDX file of ``type_code``."""
    header = bytes([0, 0, type_code, values.ndim]) + np.array(values.shape, dtype=">u4").tobytes()
    return header + values.astype(IDX_TYPES[type_code]).tobytes()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    type_code=st.sampled_from(sorted(IDX_TYPES)),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    compressed=st.booleans(),
)
def test_idx_round_trip(tmp_path_factory, type_code, shape, seed, compressed):
    info = np.iinfo(IDX_TYPES[type_code]) if IDX_TYPES[type_code].kind in "iu" else None
    rng = np.random.default_rng(seed)
    if info is None:
        values = rng.normal(size=shape).astype(IDX_TYPES[type_code])
    else:
        values = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(IDX_TYPES[type_code])
    data = idx_bytes(values, type_code)
    path = tmp_path_factory.mktemp("idx") / ("file.gz" if compressed else "file")
    path.write_bytes(gzip.compress(data) if compressed else data)
    parsed = read_idx(path)
    assert parsed.shape == values.shape and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, values)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00\x08\x01" + bytes(4), "bad magic"),
        (b"\x00\x00\x07\x01" + bytes(4), "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "no dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x03", "truncated inside its header"),
        (idx_bytes(np.zeros((3, 2), np.uint8), 0x08)[:-1], "promises 6 data bytes, it holds 5"),
        (idx_bytes(np.zeros((3, 2), np.uint8), 0x08) + b"\x00", "promises 6 data bytes, it holds 7"),
        (b"\x00\x00", "bad magic"),
    ],
)
def test_corrupt_idx_is_rejected(data, message):
    with pytest.raises(DataError, match=message):
        parse_idx(data, "f.idx")


def test_truncated_gzip_idx_is_rejected(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100), 0x08))[:-20])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_missing_idx_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "absent.gz")


# --- NumPy-only pickles -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4])
def test_numpy_arrays_unpickle(protocol):
    arrays = ((np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3])), np.zeros(0, np.uint8))
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(arrays, protocol=protocol)))
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])
    assert loaded[0][0].dtype == np.float32
    np.testing.assert_array_equal(loaded[0][1], arrays[0][1])
    assert loaded[1].shape == (0,)


class _MakesFolder:
    """A pickle payload that would create a folder when unpickled by a plain unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_pickle_calling_a_function_is_refused_before_the_call(tmp_path):
    target = tmp_path / "created"
    payload = pickle.dumps([np.zeros(2), _MakesFolder(target)], protocol=4)
    with pytest.raises(DataError, match=r"refusing to unpickle (os|posix)\.mkdir"):
        load_numpy_pickle(io.BytesIO(payload))
    assert not target.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"), ("numpy", "frombuffer")],
)
def test_any_other_global_is_refused(module, name):
    payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n."
    with pytest.raises(DataError, match=f"refusing to unpickle {module}.{name}"):
        load_numpy_pickle(io.BytesIO(payload))


@pytest.mark.parametrize("payload", [b"", b"\x80\x04\x95", pickle.dumps([1, 2, 3], protocol=4)[:-2]])
def test_malformed_pickle_is_a_data_error(payload):
    with pytest.raises(DataError, match="malformed pickle"):
        load_numpy_pickle(io.BytesIO(payload))


# --- Unix compress (.Z) -----------------------------------------------------------------------

#: ``compress`` 4.2.4 (ncompress, default 16-bit block mode) applied to ``_fixture_text()``: 985
#: codes, so its widths run 9, 10 and 11 bits.
REAL_COMPRESS_OUTPUT = base64.b64decode(
    "H52QMFzAGAiDBYiAN3LEmGEwYAwbNWg0dBFDhowYE23YiFFj4g0cM25MpIEDR8eDLm7csFEQpQ0aGyfCyJGjpcMZMD3WkJFj"
    "Yo4aM3B4DHnSIYygMnf2RFkDR06XNG26mJEjpssbNZYGBOrUJ0gbMmNwzGgRI0ocHBkyVag2YA4aNCfiYDsy7cSdMqReHIuS"
    "5AywKGcElYhSZVaPVaVSnXvXadGpO4UWPirSZUjCDoFWDihj52YXOXBippiDMUoYMKXSwCo5IEmQMkGOlrGxrcCLWqdCNMtZ"
    "Ie+UND/PFXt3t9yLrV1orBhbcGy0GbECDug4eVYcn0PTkCF35+MZQB/TCPk7xtHR4DtPjOGU+1oc011krfE5BtbvQaXCAPmb"
    "hljFF8WHFkly1WQdXKMlBMNnGxF42kWPwWBebk3NINUNISW3GlCIRZRRabaxR9VEnV3k01Hl/ZUdUIrt9JtgSJ1VmnsBocZh"
    "YVj9th9WXsnwWWrxuVjeS+jVFGJUdxlZ3HjrXaQXS6PN+JgM2IV4g4MBEZmbDTl8NBGMo9VQw0Nf7hQfhjbQmBIM6qHUGV8B"
    "BTWDmjOt9OVbn/lIw2MY3nAhDhbVNRBZMMTnX4wIzfXZlV25qWhdITWJ2kgzJUdlDLmhueiValLF5Fo3dAroomNeKGFuMoD3"
    "3Zi5wVDDTF/OGR+mfmZEAw1S2YChpfDZRhKcLnQWWkaYUmjDDDrOJRWtwim73rH60TpSVv2hRadJqGI4Gmp/3flSrHl1x6ZP"
    "Y/52LJagSfgbVhKuh1ZymKaJ2Jw+YXihqrEVKtN+j7Gaa0W2UQnoXTAlFxR0Z1X027sa7qdmU0fFOmZ0bW6Vg48y/fQYe8Sd"
    "BVeIA6kZGqKQjRsYXCJbmNxMO8m1nZUmnubYXQkxSN93HBe30JfYqZlQUx5h9+JGv43ppZv0PZyQr0791iWwqNn34Z4+WXih"
    "X+uhvN6cyXGpkMsIb5VQcnNthxhzbt5gXqzg1QsfiYVGaJ9q5olqlVu3frYfS3KZt+xDehfa30cPz5nb3EW6up52NJu21Wo6"
    "lqYXsvHhiSpMh1MZZGi54vobbaWNBGjAKo0GUcsucQRvVno5lRtNbTuKrupdc/QYROj6yKXoUrvJpblU2ZZVzA7pTuKeyb2l"
    "K4kW2jaTRgTXEKRKR/YeZ0n12WDSXRbmttrdAh11eAy3yrVgfPvFjjfxU8lG6ZVh+Qe3+qDdF2vEvqsU9NHU1fQZffLyWPmg"
    "cqPiOY4ie/LZrUQmrA+ZrEYhsU1VatWXn9HsKZzZSZgqkhvwBDBR7FNQfIKCqbuIqYMVic9uKHQl/Xwkex90wVecNxyfyGA1"
    "X9pOB8eTPD1lrFseo816rkTDtzHFJAzC3Zd8xEILUWo/fdvZWWzEs0kxhSqtw1+WuHWXCe1LiwIJlW1CpTafvIRPTqkPdjZm"
    "L4/4R01zYV+a6OMT/+TGKbAKjEVGCJ9W4eRJkTrNSgYnRdfARUfPW09k5PJCd2FIJh/pl3cyMhM13XB7FdRX2gqonDQxyHDu"
    "oqMe0QbBt+QQjBYhGZfaVRiqvMhP/zPJiwC1ro1k6oYB41KRQrWeBf1oINnS3lA8hKPl9WUgKlyQbagCvcJob1Gpmg1LDIaD"
    "PNYIJDcA"
)


def _fixture_text() -> bytes:
    return ", ".join(f"{(i * i * 7919) % 10007 / 10007:.4f}" for i in range(400)).encode()


def lzw_compress(data: bytes, max_width: int = 16, block_mode: bool = True) -> bytes:
    """A plain .Z encoder for making test files; in block mode it CLEARs whenever the table fills."""
    limit, first_entry = 1 << max_width, 257 if block_mode else 256
    codes: list[int] = []
    if data:
        table: dict[tuple[int, int], int] = {}
        next_code, current = first_entry, data[0]
        for byte in data[1:]:
            if (current, byte) in table:
                current = table[(current, byte)]
                continue
            codes.append(current)
            if next_code < limit:
                table[(current, byte)] = next_code
                next_code += 1
            elif block_mode:
                codes.append(256)
                table, next_code = {}, first_entry
            current = byte
        codes.append(current)
    flags = max_width | (0x80 if block_mode else 0)
    return bytes([0x1F, 0x9D, flags]) + _pack(codes, max_width, block_mode)


def _pack(codes: list[int], max_width: int, block_mode: bool) -> bytes:
    """Write codes at the width the decoder expects, padding to a whole group of eight codes
    whenever the width changes or a CLEAR is written."""
    buffer = written = segment = 0
    width, free, stream_start = 9, (257 if block_mode else 256), True

    def padded() -> int:
        group = 8 * width
        return segment + -(-(written - segment) // group) * group

    for code in codes:
        if width < max_width and free > (1 << width) - 1:
            written = segment = padded()
            width += 1
        buffer |= code << written
        written += width
        if block_mode and code == 256:
            written = segment = padded()
            width, free = 9, 256
            continue
        if not stream_start and free < 1 << max_width:
            free += 1
        stream_start = False
    return buffer.to_bytes((written + 7) // 8, "little")


def _gzip_decompress(data: bytes) -> bytes | None:
    """What gzip (which reads .Z too) makes of ``data``; None where gzip is not installed."""
    if shutil.which("gzip") is None:
        return None
    return subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True, timeout=30).stdout


def test_output_of_the_real_compress_tool_decodes():
    assert decompress(REAL_COMPRESS_OUTPUT) == _fixture_text()


def test_table_clearing_and_full_tables_decode():
    data = np.random.default_rng(0).integers(0, 6, 30_000, dtype=np.uint8).tobytes()
    packed = lzw_compress(data, max_width=10)
    if (reference := _gzip_decompress(packed)) is not None:
        assert reference == data  # the encoder writes what gzip reads
    assert decompress(packed) == data
    no_clear = lzw_compress(data, max_width=10, block_mode=False)
    assert decompress(no_clear) == data


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 12_000),
    alphabet=st.integers(1, 256),
    max_width=st.integers(10, 16),
    block_mode=st.booleans(),
)
def test_lzw_round_trip_agrees_with_gzip(seed, size, alphabet, max_width, block_mode):
    data = np.random.default_rng(seed).integers(0, alphabet, size, dtype=np.uint8).tobytes()
    packed = lzw_compress(data, max_width, block_mode)
    assert decompress(packed) == data
    if (reference := _gzip_decompress(packed)) is not None:
        assert reference == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x1f\x8b\x90", "bad magic"),
        (b"\x1f\x9d", "bad magic"),
        (b"\x1f\x9d\x91\x00\x00", "outside 9..16"),
        (b"\x1f\x9d\x90" + (300).to_bytes(2, "little"), "not yet defined"),  # first code must be a byte
        (b"\x1f\x9d\x90" + (65 | 400 << 9).to_bytes(3, "little"), "not yet defined"),  # 400 > next entry 257
    ],
)
def test_corrupt_z_stream_is_rejected(data, message):
    with pytest.raises(DataError, match=message):
        decompress(data)


# --- CIFAR ------------------------------------------------------------------------------------


def make_cifar_tarball(
    path: Path, release: cifar.CifarRelease, records_per_member: int, seed: int, replace: dict | None = None
) -> dict:
    """Write a tarball with ``release``'s real member names, ``replace`` overriding some members'
    bytes; return the raw records per split."""
    replace = replace or {}
    rng = np.random.default_rng(seed)
    label_bound = [20, 100] if release.label_bytes == 2 else [10]
    raw: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as archive:
        members = [(m, "train") for m in release.train_members] + [(m, "test") for m in release.test_members]
        for member, split in [*members, (members[0][0].split("/")[0] + "/readme.html", None)]:
            if split is None:
                data = b"<html>not a batch</html>"
            else:
                labels = np.stack([rng.integers(0, bound, records_per_member) for bound in label_bound], axis=1)
                pixels = rng.integers(0, 256, (records_per_member, 3072))
                records = np.concatenate([labels, pixels], axis=1).astype(np.uint8)
                raw[split].append(records)
                data = replace.get(member, records.tobytes())
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return {split: np.concatenate(chunks) for split, chunks in raw.items()}


def place(path: Path, table: dict, key: str, monkeypatch, module) -> None:
    """Register ``path``'s digest under ``key`` in ``module``'s checksum table."""
    monkeypatch.setitem(getattr(module, table), key, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize(
    ("release", "loader"), [(cifar.CIFAR10, cifar.load_cifar10), (cifar.CIFAR100, cifar.load_cifar100)]
)
def test_cifar_loads_records_channel_first_with_the_fine_label(tmp_path, monkeypatch, release, loader):
    path = tmp_path / release.name / release.filename
    path.parent.mkdir()
    raw = make_cifar_tarball(path, release, records_per_member=6, seed=1)
    place(path, "SHA256", release.filename, monkeypatch, cifar)
    data = loader(data_dir=tmp_path)
    train_pixels = raw["train"][:, release.label_bytes :].astype(np.float64)
    mean, std = train_pixels.mean(), train_pixels.std(ddof=1)
    for x, y, records in ((data.x_train, data.y_train, raw["train"]), (data.x_test, data.y_test, raw["test"])):
        assert x.shape == (len(records), 3, 32, 32) and x.dtype.is_floating_point
        np.testing.assert_array_equal(y.numpy(), records[:, release.label_bytes - 1])
        # bytes 0..1023 of a record are the red plane, row by row: x[:, 0, r, c] == byte 32 r + c
        expected = (records[:, release.label_bytes :].reshape(-1, 3, 32, 32) - mean) / std
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert data.num_classes == release.num_classes and data.x_val is None
    assert len(data.y_train) == 6 * len(release.train_members)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes(3073 + 100), "not a whole number of 3073-byte records"),
        (bytes([11]) + bytes(3072), "label 11 found"),
        (b"", "not a whole number"),
    ],
)
def test_corrupt_cifar_member_is_rejected_and_removed(tmp_path, monkeypatch, data, message):
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    path.parent.mkdir()
    make_cifar_tarball(path, cifar.CIFAR10, 2, seed=4, replace={"cifar-10-batches-bin/data_batch_3.bin": data})
    place(path, "SHA256", "cifar-10-binary.tar.gz", monkeypatch, cifar)
    with pytest.raises(DataError, match=message):
        cifar.load_cifar10(data_dir=tmp_path)
    assert not path.exists()


def test_cifar_python_version_tarball_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 6
        archive.addfile(info, io.BytesIO(b"pickle"))
    place(path, "SHA256", "cifar-10-binary.tar.gz", monkeypatch, cifar)
    with pytest.raises(DataError, match=r"no file cifar-10-batches-bin/data_batch_1\.bin; is it the CIFAR binary"):
        cifar.load_cifar10(data_dir=tmp_path)
    assert not path.exists()


def test_truncated_cifar_download_is_rejected_and_removed(tmp_path, monkeypatch):
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    path.parent.mkdir()
    make_cifar_tarball(path, cifar.CIFAR10, records_per_member=3, seed=2)
    path.write_bytes(path.read_bytes()[:-500])
    place(path, "SHA256", "cifar-10-binary.tar.gz", monkeypatch, cifar)
    with pytest.raises(DataError, match=r"corrupt or truncated tar\.gz"):
        cifar.load_cifar10(data_dir=tmp_path)
    assert not path.exists()


def test_cifar_offline_error_says_where_to_put_the_tarball(tmp_path, monkeypatch):
    offline = dataclasses.replace(cifar.CIFAR10, url=(tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.setattr(cifar, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"save it as .*cifar10/cifar-10-binary\.tar\.gz"):
        cifar.load_cifar10(data_dir=tmp_path)


# --- ISOLET -----------------------------------------------------------------------------------


def isolet_text(features: np.ndarray, labels: np.ndarray) -> bytes:
    """Rows in UCI's layout: ``f1, f2, ..., f617, 12.``."""
    rows = [", ".join(f"{v:.4f}" for v in row) + f", {label}." for row, label in zip(features, labels)]
    return ("\n".join(rows) + "\n").encode()


def make_isolet_zip(path: Path, members: dict[str, bytes]) -> None:
    """UCI's zip layout: the two .Z tables beside a description file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("isolet.names", "ISOLET description")
        for name, text in members.items():
            archive.writestr(name, lzw_compress(text))


@pytest.fixture
def isolet_tables(monkeypatch):
    """Small train/test ISOLET tables, with the expected row counts patched to their sizes."""
    rng = np.random.default_rng(3)
    tables = {}
    for member, rows in ((isolet.TRAIN_MEMBER, 40), (isolet.TEST_MEMBER, 12)):
        tables[member] = (rng.uniform(-1, 1, (rows, 617)), rng.integers(1, 27, rows))
        monkeypatch.setitem(isolet.EXPECTED_ROWS, member, rows)
    return tables


def test_isolet_loads_uci_layout(tmp_path, isolet_tables):
    make_isolet_zip(tmp_path / "isolet" / "isolet.zip", {m: isolet_text(*t) for m, t in isolet_tables.items()})
    data = isolet.load_isolet(data_dir=tmp_path)
    train_x, train_y = isolet_tables[isolet.TRAIN_MEMBER]
    test_x, test_y = isolet_tables[isolet.TEST_MEMBER]
    np.testing.assert_array_equal(data.y_train.numpy(), train_y - 1)
    np.testing.assert_array_equal(data.y_test.numpy(), test_y - 1)
    assert data.x_train.shape == (40, 617) and data.x_test.shape == (12, 617) and data.num_classes == 26
    rounded = np.round(train_x, 4)
    expected = (np.round(test_x, 4) - rounded.mean(0)) / rounded.std(0, ddof=1)
    np.testing.assert_allclose(data.x_test.numpy(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x, y: (x[:-1], y[:-1]), "has 39 rows, expected 40"),
        (lambda x, y: (x[:, :-1], y), "has 617 columns, expected 618"),
        (lambda x, y: (x, np.where(y == y[0], 27, y)), "labels outside 1..26"),
    ],
)
def test_malformed_isolet_table_is_rejected_and_removed(tmp_path, isolet_tables, mutate, message):
    tables = {m: isolet_text(*t) for m, t in isolet_tables.items()}
    tables[isolet.TRAIN_MEMBER] = isolet_text(*mutate(*isolet_tables[isolet.TRAIN_MEMBER]))
    path = tmp_path / "isolet" / "isolet.zip"
    make_isolet_zip(path, tables)
    with pytest.raises(DataError, match=message):
        isolet.load_isolet(data_dir=tmp_path)
    assert not path.exists()


def test_isolet_zip_without_the_test_member_is_rejected(tmp_path, isolet_tables):
    x, y = isolet_tables[isolet.TRAIN_MEMBER]
    make_isolet_zip(tmp_path / "isolet" / "isolet.zip", {isolet.TRAIN_MEMBER: isolet_text(x, y)})
    with pytest.raises(DataError, match=r"no member isolet5\.data\.Z"):
        isolet.load_isolet(data_dir=tmp_path)


def test_isolet_member_that_is_not_compressed_is_rejected(tmp_path):
    path = tmp_path / "isolet" / "isolet.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(isolet.TRAIN_MEMBER, "1.0, 2.0, 1.\n")
        archive.writestr(isolet.TEST_MEMBER, "1.0, 2.0, 1.\n")
    with pytest.raises(DataError, match="not a Unix-compress"):
        isolet.load_isolet(data_dir=tmp_path)


def test_truncated_isolet_zip_is_rejected(tmp_path, isolet_tables):
    path = tmp_path / "isolet" / "isolet.zip"
    make_isolet_zip(path, {m: isolet_text(*t) for m, t in isolet_tables.items()})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated zip"):
        isolet.load_isolet(data_dir=tmp_path)
    assert not path.exists()

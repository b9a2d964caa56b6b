"""The allowlisting unpickler: what it rebuilds, what it refuses, and that it cannot be tampered with."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
from conftest import a1111_dict, save_pt

from hyperkit.errors import CorruptFileError, UnsafePickleError
from hyperkit.formats import safe_pickle
from hyperkit.formats.torchfile import read_torch_bytes, read_torch_file


def _zip(pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/data.pkl", pkl)
        for key, data in (storages or {}).items():
            zf.writestr(f"a/data/{key}", data)
    return buf.getvalue()


def test_build_on_an_allowlisted_global_cannot_poison_later_reads():
    # GLOBAL torch.FloatStorage, then BUILD {'dtype': 1}: would change every later read's dtype.
    pkl = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb."
    with pytest.raises(CorruptFileError, match="pickle tried to modify one of hyperkit's allowlisted globals"):
        read_torch_bytes(_zip(pkl))
    assert safe_pickle.ALLOWED[("torch", "FloatStorage")].dtype == np.dtype("f4")


def test_tensor_view_outside_its_storage_is_refused():
    # A 4-element storage viewed as size (8,): as_strided would read past the buffer.
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
    pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00K\x08\x85K\x01\x85\x89N\x74R."
    with pytest.raises(CorruptFileError, match=r"tensor view \(offset 0, size \[8\]\) reaches element 7"):
        read_torch_bytes(_zip(pkl, {"0": b"\0" * 16}))


def test_storage_smaller_than_declared_is_refused():
    pid = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
    pkl = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00K\x04\x85K\x01\x85\x89N\x74R."
    with pytest.raises(CorruptFileError, match="storage '0' holds 8 bytes, too few for 4 elements"):
        read_torch_bytes(_zip(pkl, {"0": b"\0" * 8}))


def test_numpy_scalars_from_third_party_trainers_become_numbers(tmp_path):
    obj = a1111_dict(dims=(8,))
    obj["step"] = np.int64(1234)
    obj["lr"] = np.float64(0.5)
    tf = read_torch_file(save_pt(obj, tmp_path / "np.pt"))
    assert tf.obj["step"] == 1234
    assert type(tf.obj["step"]) is int
    assert tf.obj["lr"] == 0.5
    assert any(g.endswith("multiarray.scalar") for g in tf.globals)


def test_object_arrays_are_refused():
    pkl = pickle.dumps(np.dtype("O"), protocol=2)
    with pytest.raises(UnsafePickleError, match="numpy dtype 'O8' is not a plain numeric type"):
        safe_pickle.load_pickle(pkl, lambda pid: None)


def test_python2_names_are_reported_in_python3_spelling():
    with pytest.raises(UnsafePickleError, match=r"'builtins\.getattr'"):
        safe_pickle.load_pickle(b"\x80\x02c__builtin__\ngetattr\n.", lambda pid: None)


def test_scan_lists_every_global_statically():
    pkl = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x05echo!\x94\x85\x94R\x94."
    assert safe_pickle.scan_globals(pkl) == ["os.system"]
    assert safe_pickle.scan_globals(b"\x80\x02cposix\nsystem\nq\x00.") == ["posix.system"]


def test_legacy_stacked_file_matches_zip_file(tmp_path):
    import torch

    obj = a1111_dict(dims=(8,))
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = read_torch_file(tmp_path / "legacy.pt")
    assert legacy.container == "legacy"
    for which in (0, 1):
        for key, tensor in obj[8][which].items():
            assert np.array_equal(legacy.obj[8][which][key], tensor.numpy())

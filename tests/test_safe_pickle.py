"""The allowlisting unpickler: what it rebuilds, what it refuses, and that it cannot be tampered with."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
from conftest import a1111_dict, save_pt

from hyperkit.errors import BadInputError, CorruptFileError, UnsafePickleError
from hyperkit.formats import safe_pickle
from hyperkit.formats.pickle_scan import analyze
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
    assert analyze(pkl).globals == ["os.system"]
    assert analyze(b"\x80\x02cposix\nsystem\nq\x00.").globals == ["posix.system"]


def test_stack_global_names_come_from_the_strings_on_the_stack():
    """Protocol 4 memoises the module and name strings and may fetch them back with BINGET."""
    pkl = pickle.dumps([print, print, len], protocol=4)
    facts = analyze(pkl)
    assert facts.globals == ["builtins.print", "builtins.len"]
    assert {"STACK_GLOBAL", "MEMOIZE", "FRAME"} <= set(facts.opcodes)


@pytest.mark.parametrize(
    ("pkl", "message"),
    [
        (b"\x80\x02N" + b"\x85" * 100 + b".", "more than 64 levels deep"),
        (b"\x80\x02]q\x00h\x00a.", "self-referencing"),
        (b"\x80\x020N.", "stack underflow"),
        (b"\x80\x02N", "exhausted before seeing STOP"),
        (b"\x80\x02N" + b"N0" * 1_000_001 + b".", "more than 1,000,000 opcodes"),
        (b"\x80\x02h\x05.", "memo key 5 was never stored"),
        (b"\x80\x02Nr\xff\xff\xff\x7f.", "memo index 2147483647 exceeds the 1 objects built"),
    ],
    ids=["deep-tuple", "cycle", "underflow", "truncated", "too-many-ops", "bad-memo", "memo-index-bomb"],
)
def test_analysis_refuses_before_unpickling(pkl, message):
    with pytest.raises(BadInputError, match=message):
        safe_pickle.load_pickle(pkl, lambda pid: None)


def test_depth_counts_containers_filled_after_they_were_shared():
    """A list memoised, placed in a tuple, and only then filled must count at its final depth."""
    # [] PUT0, GET0 TUPLE1 (tuple holds the list), POP, then fill the list with a 70-deep tuple
    pkl = b"\x80\x02]q\x00h\x00\x85" + b"0" + b"N" + b"\x85" * 70 + b"a."
    with pytest.raises(BadInputError, match="more than 64 levels deep"):
        analyze(pkl)


def test_legacy_stacked_file_matches_zip_file(tmp_path):
    import torch

    obj = a1111_dict(dims=(8,))
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = read_torch_file(tmp_path / "legacy.pt")
    assert legacy.container == "legacy"
    for which in (0, 1):
        for key, tensor in obj[8][which].items():
            assert np.array_equal(legacy.obj[8][which][key], tensor.numpy())


def _tensor_pickle(size: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """A protocol-2 pickle of one tensor record over storage '0' (numel float32 elements)."""
    from hyperkit.formats.pickle_writer import PickleWriter

    w = PickleWriter([])
    w.out = bytearray(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((")
    for item in ("storage",):
        w._save(item)
    w.out += b"ctorch\nFloatStorage\n"
    for item in ("0", "cpu", numel):
        w._save(item)
    w.out += b"tQ"
    for item in (0, size, stride):
        w._save(item)
    w.out += b"\x89ccollections\nOrderedDict\n)RtR."
    return bytes(w.out)


@pytest.mark.parametrize(
    ("size", "stride", "message"),
    [
        ((25000, 20000), (0, 0), "overlaps itself"),
        ((10, 10), (1, 1), "overlaps itself"),
        ((3, 4), (4, 1), "reaches element 11, past its storage of 4"),
    ],
    ids=["zero-stride", "overlapping", "out-of-bounds"],
)
def test_views_are_never_expanded(size, stride, message):
    data = _zip(_tensor_pickle(size, stride, 4 if message.startswith("reaches") else 100), {"0": bytes(400)})
    with pytest.raises(BadInputError, match=message):
        read_torch_bytes(data)


def test_a_transposed_view_is_copied_contiguous():
    data = _zip(_tensor_pickle((3, 2), (1, 3), 6), {"0": np.arange(6, dtype="<f4").tobytes()})
    arr = read_torch_bytes(data).obj
    assert arr.flags.c_contiguous
    assert arr.tolist() == [[0, 3], [1, 4], [2, 5]]


def test_zip_bomb_is_refused_from_the_directory():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/data.pkl", _tensor_pickle((1,), (1,), 1))
        zf.writestr("a/data/0", bytes(64 << 20))
    with pytest.raises(BadInputError, match=r"inflate to 67,108,990 bytes, over 32x .*zip bomb"):
        read_torch_bytes(buf.getvalue())


def test_legacy_file_with_a_transposed_view(tmp_path):
    """The legacy format's first pass sees storages before their data: views over them must be
    checked without being read (reading a placeholder's memory crashed the process)."""
    import torch

    weight = torch.arange(3 * 2_000_000, dtype=torch.float32).reshape(3, 2_000_000)  # 24 MB: far past a page
    torch.save(
        {"w": weight.t(), "big": torch.zeros(1000).as_strided((10, 10), (10, 1))},
        tmp_path / "t.pt",
        _use_new_zipfile_serialization=False,
    )
    obj = read_torch_file(tmp_path / "t.pt").obj
    assert np.array_equal(obj["w"], weight.t().numpy())
    assert obj["big"].shape == (10, 10)


def test_lightning_callback_class_is_accepted_as_a_name_only():
    """SD 1.x .ckpt files key their callback state by the Lightning class: readable, never called."""
    key = b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n"
    obj = read_torch_bytes(_zip(b"\x80\x02}X\t\x00\x00\x00callbacks}" + key + b"}ss.")).obj
    (name,) = obj["callbacks"]
    assert repr(name) == "<name pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint>"
    with pytest.raises(UnsafePickleError, match="allowed only as a name; nothing was run"):
        read_torch_bytes(_zip(b"\x80\x02" + key + b")R."))

"""The restricted unpickler: numpy data loads under every protocol; code and crafted state do not."""

from __future__ import annotations

import builtins
import copyreg
import os
import pickle
import subprocess
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit.data.safe_pickle import safe_load, safe_loads
from cifarkit.errors import DataError

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

SAMPLES = {
    "uint8 2-D": np.arange(12, dtype=np.uint8).reshape(3, 4),
    "empty": np.zeros((0, 3072), dtype=np.uint8),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "strided": np.arange(16, dtype=np.int64).reshape(4, 4)[::2, ::2],
    "int64 ids": np.arange(5, dtype=np.int64),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j]),
    "bytes strings": np.array([b"ab", b"c"]),
    "unicode strings": np.array(["ab", "c"]),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_containers_round_trip(protocol):
    obj = {b"data": SAMPLES, "labels": [1, 2, 3], "scalar": np.int64(7), "flag": np.bool_(True),
           "dtype": np.dtype("u1"), b"raw": b"\x00\xff", b"empty": b"", "text": "héllo", "t": (1.5, None)}
    loaded = safe_loads(pickle.dumps(obj, protocol=protocol), what="sample")
    for name, array in SAMPLES.items():
        assert np.array_equal(loaded[b"data"][name], array), name
        assert loaded[b"data"][name].dtype == array.dtype, name
    assert loaded["labels"] == [1, 2, 3] and loaded["scalar"] == 7 and loaded["flag"]
    assert loaded["dtype"] == np.dtype("u1")
    assert loaded[b"raw"] == b"\x00\xff" and loaded[b"empty"] == b""
    assert loaded["text"] == "héllo" and loaded["t"] == (1.5, None)


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy's internals under numpy 1.x's module names (numpy.core...), as numpy 1 did."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            qualname = name or obj.__qualname__
            if self.proto >= 4:
                self.save(module)
                self.save(qualname)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global     # numpy's _frombuffer is a Python function


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy1_module_names_load(protocol):
    import io
    array = np.arange(24, dtype=np.uint8).reshape(2, 12)
    buffer = io.BytesIO()
    _Numpy1Pickler(buffer, protocol=protocol).dump({b"data": array, b"n": np.int64(3)})
    data = buffer.getvalue()
    assert b"numpy.core" in data and b"numpy._core" not in data
    loaded = safe_loads(data, what="numpy1")
    assert np.array_equal(loaded[b"data"], array) and loaded[b"n"] == 3


def test_python2_style_latin1_encoding_gives_str_keys():
    loaded = safe_loads(pickle.dumps({"data": np.ones(3, np.uint8)}, protocol=2), what="x", encoding="latin1")
    assert np.array_equal(loaded["data"], np.ones(3, np.uint8))


def test_out_of_band_buffers_are_refused():
    buffers = []
    data = pickle.dumps(np.ones(4), protocol=5, buffer_callback=buffers.append)
    assert buffers
    with pytest.raises(DataError, match="not a valid pickle"):
        safe_loads(data, what="oob")


# --- payloads that must not run --------------------------------------------------------------

FLAG = {"ran": False}


def set_flag():  # a harmless global a payload could try to call
    FLAG["ran"] = True


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(sentinel: str) -> dict[str, object]:
    return {
        "os.system": _Reduce(os.system, f"touch {sentinel}"),
        "eval": _Reduce(eval, f"open({sentinel!r}, 'w').write('x')"),
        "exec": _Reduce(exec, f"open({sentinel!r}, 'w').write('x')"),
        "subprocess.Popen": _Reduce(subprocess.Popen, ["touch", sentinel]),
        "builtins.getattr": _Reduce(getattr, _Reduce(__import__, "os"), "system"),
        "module function": _Reduce(set_flag),
        "nested in a batch": {b"data": np.zeros(3, np.uint8), b"labels": [_Reduce(os.system, f"touch {sentinel}")]},
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("name", list(_payloads("x")))
def test_code_payloads_are_refused_and_not_run(tmp_path, protocol, name):
    sentinel = tmp_path / "pwned"
    data = pickle.dumps(_payloads(str(sentinel))[name], protocol=protocol)
    with pytest.raises(DataError, match=r"refuses to load pickle global '[\w.]+' \(only plain"):
        safe_loads(data, what="evil.pkl")
    assert not sentinel.exists() and not FLAG["ran"]


def test_control_the_payload_really_runs_with_plain_pickle(tmp_path):
    sentinel = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(str(sentinel))["os.system"], protocol=2))
    assert sentinel.exists()


def test_message_names_the_global(tmp_path):
    data = pickle.dumps(_Reduce(subprocess.Popen, ["true"]), protocol=2)
    with pytest.raises(DataError) as info:
        safe_loads(data, what="evil.pkl")
    assert str(info.value) == ("evil.pkl: refuses to load pickle global 'subprocess.Popen' "
                               "(only plain containers and numpy arrays are allowed)")


def test_handwritten_protocol0_payload(tmp_path):
    sentinel = tmp_path / "pwned"
    data = f"cos\nsystem\n(S'touch {sentinel}'\ntR.".encode()
    with pytest.raises(DataError, match="'os.system'"):
        safe_loads(data, what="p0")
    inst = f"(S'touch {sentinel}'\nios\nsystem\n.".encode()   # INST opcode
    with pytest.raises(DataError, match="'os.system'"):
        safe_loads(inst, what="p0")
    assert not sentinel.exists()


def test_extension_registry_goes_through_the_filter():
    copyreg.add_extension("builtins", "eval", 0xF0)
    try:
        data = b"\x80\x02\x82\xf0)R."          # EXT1 0xF0, (), REDUCE: eval()
        with pytest.raises(DataError, match="'builtins.eval'"):
            safe_loads(data, what="ext")
    finally:
        copyreg.remove_extension("builtins", "eval", 0xF0)


@pytest.mark.parametrize("data", [
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.",   # codec other than latin-1
    b"\x80\x02c__builtin__\nbytes\nJ\x00\xe1\xf5\x05\x85R.",                       # bytes(100_000_000)
    b"\x80\x02cnumpy\nndarray\nK\x05\x85R.",                                       # ndarray(5) called directly
    b"\x80\x02cnumpy\ndtype\nX\x01\x00\x00\x00O\x89\x88\x87R.",                      # object dtype
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R.",                     # void dtype
    b"\x80\x02}}b.",                                                               # BUILD on a dict
], ids=["codec", "bytes-alloc", "ndarray-call", "object-dtype", "void-dtype", "dict-build"])
def test_allowed_names_only_accept_what_numpy_writes(data):
    with pytest.raises(DataError, match="refuses to load this pickle"):
        safe_loads(data, what="crafted")


def test_object_array_state_is_refused_before_numpy_sees_it():
    # numpy itself crashes the interpreter on this state (object items, too short a list).
    crafted = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
               b"(K\x01J\x00\xca\x9a;\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R\x89]K\x01atb.")
    with pytest.raises(DataError, match="object arrays are not allowed"):
        safe_loads(crafted, what="crafted")


def test_dtype_flags_cannot_be_forged():
    # A plain dtype whose state claims object items (flags 63) would make numpy treat bytes as pointers.
    crafted = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"
               b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb.")
    with pytest.raises(DataError, match="not a plain dtype"):
        safe_loads(crafted, what="crafted")


@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x02}q\x00(X", b"not a pickle at all", b"\x80\x05\x95"])
def test_garbage_is_a_data_error(data):
    with pytest.raises(DataError, match="crafted is not a valid pickle file"):
        safe_loads(data, what="crafted")


def test_truncated_real_pickle():
    data = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}, protocol=2)
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(DataError, match="not a valid pickle"):
            safe_loads(data[:cut], what="cut")


def test_safe_load_reads_a_file(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({b"a": np.ones(2)}))
    with open(path, "rb") as f:
        assert np.array_equal(safe_load(f, what=str(path))[b"a"], np.ones(2))


# --- fuzzing: nothing but DataError, ever -----------------------------------------------------

_VALID = [
    pickle.dumps({b"data": np.arange(40, dtype=np.uint8).reshape(4, 10), b"labels": [0, 1, 2, 3],
                  b"ids": np.arange(4), b"name": b"batch"}, protocol=p)
    for p in (0, 2, 4, 5)
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_data_error(data):
    try:
        safe_loads(data, what="fuzz")
    except DataError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.integers(0, 64))
def test_mutated_pickles_only_raise_data_error(valid, edits, cut):
    data = bytearray(valid)
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: len(data) - cut])
    try:
        safe_loads(data, what="fuzz")
    except DataError:
        pass
    assert not FLAG["ran"]
    assert builtins.eval is eval  # nothing was monkeypatched by a payload


def test_length_fields_cannot_force_huge_allocations():
    data = pickle.dumps(np.ones(1000, np.uint8), protocol=5)
    at = data.index(pickle.BYTEARRAY8)
    bomb = data[: at + 1] + (10**12).to_bytes(8, "little") + data[at + 9:]
    with pytest.raises(DataError, match="longer than the whole file"):
        safe_loads(bomb, what="bomb")
    crafted = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85C\x01b\x87R."
    with pytest.raises(DataError, match="only allowed to create an empty numpy array"):
        safe_loads(crafted, what="bomb")

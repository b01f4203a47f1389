#!/usr/bin/env python3
"""Writes the committed .npy test corpus of tests/io/npy.test.cpp and the seed corpus of
fuzz/npy_fuzz.cpp (this directory).

  numpy_*.npy   written by numpy.save itself (numpy 1.24.2, Debian bookworm python3-numpy):
                the reader must read them and the writer must reproduce them byte for byte
  valid_*.npy   hand-written headers numpy also accepts (versions 2.0 / 3.0, Python-2 'L'
                suffixes, double quotes, other key order, no padding)
  bad_*.npy     malformed files: each must give a peft::io_error naming the file, never a crash
                (the expected message of each is listed in tests/io/npy.test.cpp)

Run from anywhere:  python3 tests/io/data/npy/make_npy_corpus.py   (deterministic; the numpy_*
files are only rewritten when numpy is importable)
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"\x93NUMPY"


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def v1(header, data=b"", hlen=None):
    h = header.encode("latin1")
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(h) if hlen is None else hlen) + h + data


def v2(header, data=b"", major=2, minor=0, hlen=None):
    h = header.encode("utf8")
    return MAGIC + bytes([major, minor]) + struct.pack("<I", len(h) if hlen is None else hlen) + h + data


def f32(*xs):
    return struct.pack("<%df" % len(xs), *xs)


def hdr(descr="'<f4'", fortran="False", shape="(2,)"):
    return "{'descr': %s, 'fortran_order': %s, 'shape': %s, }\n" % (descr, fortran, shape)


def main():
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        # The generating commands of the numpy_* files:
        np.save(os.path.join(HERE, "numpy_f4_2x3.npy"), np.arange(6, dtype="<f4").reshape(2, 3) / 7)
        np.save(os.path.join(HERE, "numpy_f8_4.npy"), np.array([1.5, -2.25, 1e-300, 3.0e300], dtype="<f8"))
        np.save(os.path.join(HERE, "numpy_f2_2x2.npy"), np.array([[1, -0.5], [65504, 6e-8]], dtype="<f2"))
        np.save(os.path.join(HERE, "numpy_f8_scalar.npy"), np.array(3.25, dtype="<f8"))
        np.save(os.path.join(HERE, "numpy_f4_0x3.npy"), np.zeros((0, 3), dtype="<f4"))
        np.save(os.path.join(HERE, "numpy_f4_2x1x2.npy"), np.array([[[1, 2]], [[3, 4]]], dtype="<f4"))

    six = f32(1, 2, 3, 4, 5, 6)
    write("valid_v2.npy", v2(hdr(shape="(2, 3)"), six))
    write("valid_v3.npy", v2(hdr(shape="(3, 2)"), six, major=3))
    write("valid_py2_long.npy", v1(hdr(shape="(2L, 3L)"), six))
    write("valid_double_quotes.npy", v1('{"shape":(6,),"descr":"<f4","fortran_order":False}', six))
    write("valid_no_trailing_comma_spaces.npy", v1("{ 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 1 , 6 ) }   \n", six))

    two = f32(1, 2)
    write("bad_magic.npy", b"\x93NUMPX\x01\x00" + v1(hdr(), two)[8:])
    write("bad_version.npy", v2(hdr(), two, major=4))
    write("bad_version_minor.npy", MAGIC + b"\x01\x01" + v1(hdr(), two)[8:])
    write("bad_short.npy", MAGIC + b"\x01\x00")
    write("bad_v2_short.npy", MAGIC + b"\x02\x00\x10\x00")
    write("bad_header_past_eof.npy", v1(hdr(), b"", hlen=4000))
    write("bad_header_too_long.npy", v2(hdr(), two, hlen=1 << 20))
    write("bad_fortran_order.npy", v1(hdr(fortran="True", shape="(2, 1)"), two))
    write("bad_big_endian.npy", v1(hdr(descr="'>f4'"), two))
    write("bad_int_dtype.npy", v1(hdr(descr="'<i4'"), two))
    write("bad_object_dtype.npy", v1(hdr(descr="'|O'"), two))
    write("bad_structured_dtype.npy", v1(hdr(descr="[('a', '<f4')]"), two))
    write("bad_missing_shape.npy", v1("{'descr': '<f4', 'fortran_order': False, }\n", two))
    write("bad_extra_key.npy", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", two))
    write("bad_duplicate_key.npy", v1("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\n", two))
    write("bad_shape_not_tuple.npy", v1(hdr(shape="(2)"), two))
    write("bad_shape_list.npy", v1(hdr(shape="[2]"), two))
    write("bad_negative_dim.npy", v1(hdr(shape="(-2,)"), two))
    write("bad_float_dim.npy", v1(hdr(shape="(2.0,)"), two))
    write("bad_leading_zero.npy", v1(hdr(shape="(02,)"), two))
    write("bad_dim_beyond_i64.npy", v1(hdr(shape="(18446744073709551616,)"), two))
    write("bad_bytes_overflow.npy", v1(hdr(shape="(4611686018427387904, 4)"), two))
    write("bad_zero_dim_overflow.npy", v1(hdr(shape="(0, 1099511627776, 1099511627776, 1099511627776)")))
    write("bad_too_many_dims.npy", v1(hdr(shape="(" + "1, " * 65 + ")"), f32(1)))
    write("bad_truncated_data.npy", v1(hdr(shape="(3,)"), two))
    write("bad_trailing_data.npy", v1(hdr(shape="(1,)"), two))
    write("bad_non_ascii.npy", v1(hdr(descr="'<f4\xe9'"), two))
    write("bad_unterminated_string.npy", v1("{'descr': '<f4", two))
    write("bad_not_dict.npy", v1("['descr', '<f4']\n", two))
    write("bad_garbage_after_dict.npy", v1(hdr().rstrip("\n") + " x\n", two))
    write("bad_escape.npy", v1(hdr(descr="'<f\\x34'"), two))
    write("bad_fortran_not_bool.npy", v1(hdr(fortran="0"), two))
    write("bad_empty_header.npy", v1("", b""))
    write("bad_unclosed_dict.npy", v1("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", two))


if __name__ == "__main__":
    main()

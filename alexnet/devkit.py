"""ImageNet's devkit (ILSVRC2012_devkit_t12/data): the validation ground truth and meta.mat.

ILSVRC2012_validation_ground_truth.txt gives the class of ILSVRC2012_val_00000001.JPEG,
ILSVRC2012_val_00000002.JPEG, ... one a line, as a number: the ILSVRC2012_ID of a synset of
meta.mat, which is the devkit's own order (1 is n02119789, kit fox), not the order of the sorted
WordNet ids (the class folders). meta.mat is a MATLAB 5 file, read here without SciPy: its
`synsets` struct array gives each ILSVRC2012_ID its WNID and words (readable names).
"""
import os
import zlib

import numpy

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
CLASSES = 1000          # ILSVRC2012_ID of the classes: 1 to 1000

# MATLAB 5 data types (MAT-File Format, table 1-1) as NumPy's, little-endian.
MAT_TYPES = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8",
             12: "<i8", 13: "<u8", 16: "u1", 17: "<u2", 18: "<u4"}
MATRIX, COMPRESSED, UTF8 = 14, 15, 16
CELL_CLASS, STRUCT_CLASS, CHAR_CLASS, SPARSE_CLASS = 1, 2, 4, 5


def elements(buf):
    """(type, bytes) of each data element of buf: a tag of type and size, then the data,
    padded to 8 bytes; a small element (4 bytes or fewer) packs both into the tag's 8."""
    at = 0
    while at + 8 <= len(buf):
        kind, size = numpy.frombuffer(buf, "<u4", 2, at)
        if kind >> 16:                                       # small element
            kind, size, start, at = kind & 0xFFFF, kind >> 16, at + 4, at + 8
        else:
            start = at + 8
            at = start + int(size) + (0 if kind == COMPRESSED else -int(size) % 8)
        yield int(kind), buf[start:start + int(size)]


def value(kind, raw):
    """The value of one data element: a matrix as matrix(), a run of numbers as an array."""
    if kind == COMPRESSED:
        return value(*next(elements(zlib.decompress(raw))))
    if kind == MATRIX:
        return matrix(raw)[1]
    return numpy.frombuffer(raw, MAT_TYPES[kind])


def matrix(raw):
    """(name, value) of a MATLAB array: text as str, a struct array as a list of dicts, a cell
    array as a list, numbers as an array of their dimensions."""
    if not raw:                                              # an empty array, written as nothing
        return "", None
    parts = elements(raw)
    flags, dims, name = (next(parts) for _ in range(3))
    kind = int(numpy.frombuffer(flags[1], "<u4")[0]) & 0xFF
    dims = tuple(int(d) for d in numpy.frombuffer(dims[1], "<i4"))
    count, name = int(numpy.prod(dims)), name[1].decode("latin-1")
    if kind == CHAR_CLASS:
        kind, text = next(parts, (UTF8, b""))
        return name, (text.decode("utf-8") if kind == UTF8 else
                      "".join(map(chr, numpy.frombuffer(text, MAT_TYPES[kind]))))
    if kind == STRUCT_CLASS:
        width = int(numpy.frombuffer(next(parts)[1], "<i4")[0])
        names = next(parts)[1]
        fields = [names[i:i + width].split(b"\0")[0].decode("latin-1")
                  for i in range(0, len(names), width)]
        return name, [{field: value(*next(parts)) for field in fields} for _ in range(count)]
    if kind == CELL_CLASS:
        return name, [value(*next(parts)) for _ in range(count)]
    if kind == SPARSE_CLASS or kind > 15:
        raise ValueError(f"it holds a MATLAB array of class {kind}, which is not read here")
    return name, value(*next(parts)).reshape(dims, order="F")


def read_mat(path):
    """The variables of a MATLAB 5 file (little-endian, as MATLAB writes it on every PC)."""
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] == b"\x89HDF":
        raise ValueError("it is a MATLAB 7.3 file (HDF5), not MATLAB 5")
    if len(buf) < 128 or buf[126:128] != b"IM":
        raise ValueError("it is not a little-endian MATLAB 5 file")
    found = {}
    for kind, raw in elements(buf[128:]):
        if kind == COMPRESSED:
            kind, raw = next(elements(zlib.decompress(raw)))
        if kind == MATRIX:
            name, content = matrix(raw)
            found[name] = content
    return found


def synsets(path):
    """{ILSVRC2012_ID: (WNID, words)} of meta.mat's synsets (1 to 1000: the classes)."""
    try:
        return {int(numpy.ravel(s["ILSVRC2012_ID"])[0]): (s["WNID"], s["words"])
                for s in read_mat(path)["synsets"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError, StopIteration, RuntimeError,
            zlib.error) as error:
        if isinstance(error, OSError):
            reason = error.strerror
        elif isinstance(error, KeyError):
            reason = f"no {error} in it"
        elif isinstance(error, (StopIteration, RuntimeError)):   # a generator's StopIteration
            reason = "it ends inside an array"
        else:
            reason = error
        raise ValueError(f"{path} cannot be read ({reason})") from None


def class_names(path):
    """[(WNID, words)] of the 1000 classes of meta.mat (ILSVRC2012_ID 1 to 1000; the synsets
    above them in WordNet come after)."""
    return [pair for number, pair in sorted(synsets(path).items()) if number <= CLASSES]


def is_ground_truth(lines):
    """Whether the lines of a label list are the devkit's: a class number each, nothing else."""
    lines = [line for line in lines if line.strip()]
    return bool(lines) and all(line.strip().isdigit() for line in lines)


def ground_truth(path, lines):
    """[(file, WNID)] of the devkit's ILSVRC2012_validation_ground_truth.txt, whose `lines`
    number the classes as the meta.mat beside it does (the devkit's data/ folder holds both);
    file is ILSVRC2012_val_<line number>, without its extension."""
    meta = os.path.join(os.path.dirname(path), META)
    if not os.path.isfile(meta):
        raise FileNotFoundError(
            f"{path} numbers the classes in the order of the devkit's meta.mat (its "
            f"ILSVRC2012_ID, not the sorted class folders), and {meta} is missing: put "
            f"ILSVRC2012_devkit_t12/data/{META} beside it")
    try:
        wnids = {number: wnid for number, (wnid, _) in synsets(meta).items()}
    except ValueError as error:
        script = (f"import scipy.io; s = scipy.io.loadmat({str(meta)!r}, squeeze_me=True)"
                  "['synsets']; w = {int(x['ILSVRC2012_ID']): x['WNID'] for x in s}; "
                  f"print(''.join(f'ILSVRC2012_val_{{n:08d}} {{w[int(c)]}}\\n' for n, c in "
                  f"enumerate(open({str(path)!r}), 1)), end='')")
        raise ValueError(f"{error}: write the list of file and class with SciPy instead (pip "
                         f"install scipy; python -c \"{script}\" > val_labels.txt) and pass "
                         "--val-labels val_labels.txt") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            if int(line) not in wnids:
                raise ValueError(f"line {number} of {path} names class {int(line)}, which "
                                 f"{meta} does not have")
            pairs.append((f"ILSVRC2012_val_{number:08d}", wnids[int(line)]))
    return pairs

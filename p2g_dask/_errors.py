"""The one error type of damaged, empty, wrong-format or missing input files.

Every reader of the package (h5ad, h5mu, 10x h5, p2g stores, parquet links and caches, GFF/GTF,
chromosome sizes, fragment files, BigWigs) raises :class:`InputFileError` with the argument, the
path, what is wrong in plain words and the fix, and checks a file's head and tail
(:func:`check_input_file`) before any heavy work.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator

#: What each kind of file is, as a user would name it, and its leading magic bytes.
_KINDS = {
    "hdf5": ("an HDF5 file (.h5ad, .h5mu or 10x .h5)", b"\x89HDF\r\n\x1a\n"),
    "parquet": ("a parquet file", b"PAR1"),
    "bigwig": ("a BigWig file", (0x888FFC26).to_bytes(4, "little")),
    "gzip": ("a gzip file", b"\x1f\x8b"),
    "text": ("a text file", b""),
    "lines": ("a text file", b""),
}
# The 28-byte empty block that ends every complete BGZF (bgzip) file.
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


class InputFileError(ValueError):
    """A damaged, empty, wrong-format or missing input file.

    The message names the argument, the path, what is wrong and the fix. Picklable (the
    attributes travel with it), so it crosses from Dask workers to the client unchanged.

    Examples
    --------
    >>> err = InputFileError("atac", "x.h5ad", "is empty (0 bytes)", "copy the file again")
    >>> str(err)
    "atac='x.h5ad' is empty (0 bytes); copy the file again."
    >>> err.path, err.argument
    ('x.h5ad', 'atac')
    """

    def __init__(self, argument: str, path: str | os.PathLike, problem: str, fix: str):
        self.argument, self.path, self.problem, self.fix = argument, os.fspath(path), problem, fix
        super().__init__(f"{argument}={self.path!r} {problem}; {fix}.")

    def __reduce__(self):
        return type(self), (self.argument, self.path, self.problem, self.fix)


class InputFileNotFoundError(InputFileError, FileNotFoundError):
    """An input file that does not exist: an :class:`InputFileError` and a ``FileNotFoundError``.

    Examples
    --------
    >>> isinstance(InputFileNotFoundError("atac", "x.h5ad", "does not exist", "check the path"), OSError)
    True
    """


def _fix_for(kind: str) -> str:
    what = _KINDS.get(kind, _KINDS["text"])[0]
    return f"pass {what}; if it was copied or downloaded, copy it again (compare its size with the original)"


def check_input_file(path: str | os.PathLike, *, argument: str, kind: str) -> None:
    """Raise :class:`InputFileError` when ``path`` is missing, a directory, empty, or not ``kind``.

    Reads only the first and last bytes: ``kind`` is ``"hdf5"``, ``"parquet"`` (magic at both
    ends, so a cut file is seen), ``"bigwig"``, ``"gzip"`` (a bgzip file must end with its EOF
    block), ``"text"`` (a gzip or plain text file; only presence and size are checked) or ``"lines"``
    (as ``"text"``, and a plain file must end with a line end).

    Examples
    --------
    >>> check_input_file("/nonexistent.h5ad", argument="atac", kind="hdf5")
    Traceback (most recent call last):
    ...
    p2g_dask._errors.InputFileNotFoundError: atac='/nonexistent.h5ad' does not exist; check the path (relative paths start from the current folder).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputFileNotFoundError(argument, path, "does not exist",
                             "check the path (relative paths start from the current folder)")
    if os.path.isdir(path):
        raise InputFileError(argument, path, "is a directory, not a file", _fix_for(kind))
    size = os.path.getsize(path)
    if size == 0:
        raise InputFileError(argument, path, "is empty (0 bytes)", _fix_for(kind))
    what, magic = _KINDS[kind]
    with open(path, "rb") as fh:
        head = fh.read(64)
        fh.seek(max(0, size - 28))
        tail = fh.read()
    if kind in ("text", "lines"):
        if head[:2] == b"\x1f\x8b":
            kind, magic = "gzip", _KINDS["gzip"][1]
        elif kind == "lines" and not tail.endswith(b"\n"):
            # Tables written by tools end with a line end; a cut copy ends mid-line.
            raise InputFileError(argument, path, f"is truncated ({size:,} bytes; its last line has no line end)",
                                 _fix_for(kind))
        else:
            return
    if kind == "hdf5" and not head.startswith(magic):
        # HDF5 allows a user block before the superblock (MuData writes 512 bytes): the signature
        # then sits at 512, 1024, 2048, ...
        with open(path, "rb") as fh:
            offset = 512
            while offset < size and not head.startswith(magic):
                fh.seek(offset)
                if fh.read(len(magic)) == magic:
                    return
                offset *= 2
    if not head.startswith(magic):
        raise InputFileError(argument, path, f"is not {what} (its first bytes are {head[:8]!r})", _fix_for(kind))
    if kind == "bigwig" and not tail.endswith(magic):
        raise InputFileError(argument, path, f"is truncated ({size:,} bytes; a BigWig ends with its signature)",
                             _fix_for(kind))
    if kind == "bigwig" and len(head) >= 40:
        # The header points at the chromosome tree, the data and the index: all inside a whole file.
        offsets = [int.from_bytes(head[i : i + 8], "little") for i in (8, 16, 24)]
        if max(offsets) >= size:
            raise InputFileError(argument, path, f"is truncated ({size:,} bytes; its header points at byte "
                                 f"{max(offsets):,})", _fix_for(kind))
    if kind == "parquet" and not tail.endswith(b"PAR1"):
        raise InputFileError(argument, path, f"is truncated ({size:,} bytes; a parquet file ends with its footer)",
                             _fix_for(kind))
    # A BGZF file (gzip with the 'BC' extra field, as bgzip and 10x write) ends with an EOF block.
    if kind == "gzip" and len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" and tail != _BGZF_EOF:
        raise InputFileError(argument, path, f"is truncated ({size:,} bytes; a bgzip file ends with an empty "
                             "EOF block, missing here)", _fix_for(kind))


def describe(err: BaseException) -> str:
    """A reader's exception in plain words (truncated / not readable), for an InputFileError."""
    text = str(err)
    lowered = text.lower()
    if "truncated" in lowered or isinstance(err, EOFError) or "end-of-stream" in lowered or "eof" in lowered:
        return f"is truncated ({text.splitlines()[0][:160] if text else type(err).__name__})"
    if "signature" in lowered or "not an hdf5" in lowered or "file signature not found" in lowered:
        return "is not an HDF5 file"
    return f"cannot be read: it is damaged ({type(err).__name__}: {text.splitlines()[0][:160] if text else ''})"


#: Exceptions of the file libraries that mean "this file is damaged", not "this call is wrong".
def _damage_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, EOFError, zlib.error, KeyError, UnicodeDecodeError]
    with contextlib.suppress(ImportError):
        import pyarrow

        types.append(pyarrow.ArrowInvalid)
    return tuple(types)


@contextlib.contextmanager
def reading(path: str | os.PathLike, *, argument: str, kind: str) -> Iterator[None]:
    """Turn the file libraries' errors while reading ``path`` into :class:`InputFileError`.

    Examples
    --------
    >>> with reading("x.parquet", argument="links", kind="parquet"):
    ...     raise OSError("Parquet magic bytes not found in footer. Either the file is corrupted")
    Traceback (most recent call last):
    ...
    p2g_dask._errors.InputFileError: links='x.parquet' cannot be read: it is damaged (OSError: Parquet magic bytes not found in footer. Either the file is corrupted); pass a parquet file; if it was copied or downloaded, copy it again (compare its size with the original).
    """
    try:
        yield
    except InputFileError:
        raise
    except FileNotFoundError as err:
        raise InputFileNotFoundError(argument, path, f"does not exist or lost a part ({err})",
                             "check the path") from err
    except _damage_types() as err:
        if isinstance(err, KeyError):
            problem = f"lacks the expected element {err.args[0] if err.args else ''!s}"
            raise InputFileError(argument, path, problem, _fix_for(kind)) from err
        raise InputFileError(argument, path, describe(err), _fix_for(kind)) from err

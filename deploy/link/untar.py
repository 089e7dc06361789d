"""The tar stream a board sends (``pull``), unpacked with every limit the host sets and nothing else trusted.

Python's ``tarfile`` would take a 1.5 GiB pax header or GNU long name into memory, write a GNU sparse member's
holes out as zeros (50 GiB from a stream of a few blocks), and accept links and devices for the caller to
refuse afterwards. This reader takes the stream block by block (``tarfile.TarInfo.frombuf`` parses each header)
and allows only what the board's pull writes:

* regular files and directories; any other member type (links, devices, FIFOs, GNU sparse, pax global headers,
  GNU long link names, vendor types) is refused before its data is read;
* pax extended headers and GNU long names of at most ``HEADER_LIMIT`` bytes (refused before they are read);
  of a pax header only ``path`` and ``size`` are used, and ``GNU.sparse.*`` keys are refused;
* names that stay inside the destination (no absolute path, ``..``, empty part or NUL), each file created
  afresh (``O_EXCL | O_NOFOLLOW``: a second member of the same name is refused, nothing is written through a
  link), mode 0644;
* every content byte counted against the size the board announced and every file against its file count,
  checked before anything of the member is written.

Errors are :class:`TarRefused` with a one-line message; the caller adds the board and removes what was written.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

BLOCK = tarfile.BLOCKSIZE
HEADER_LIMIT = 16 << 10  # a pax header or GNU long name: PATH_MAX (4096) in UTF-8 fits four times over
PIECE = 1 << 20
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
NAME_TYPES = (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME)  # headers that carry the next member's name


class TarRefused(Exception):
    """A stream that is not what a pull may bring (the message is one line)."""


def overhead(files: int) -> int:
    """The most tar framing ``files`` members may add to their content: a header, a pax header and its data,
    padding; plus the end-of-archive blocks and the record padding after them."""
    return (files + 1) * (3 * BLOCK + HEADER_LIMIT) + 20 * BLOCK


def extract(read: Callable[[int], bytes], dest: Path, max_bytes: int, max_files: int) -> tuple[int, int]:
    """Unpack the tar stream ``read(n)`` gives (at most n bytes, b"" at its end) into the existing directory
    ``dest``; (files, content bytes). TarRefused for anything outside the rules above."""
    reader = _Reader(read)
    made: set[Path] = {dest}
    files = size = dirs = 0
    while True:
        member = _next_member(reader)
        if member is None:
            return files, size
        name = _safe_name(member.name)
        out = dest.joinpath(*name.parts)
        if member.isdir():
            dirs += 1
            if dirs > max_files + 1024 or member.size:
                raise TarRefused(f"directory {member.name[:200]!r}: more than {max_files + 1024} or one with content")
            out.mkdir(parents=True, exist_ok=True)
            made.add(out)
            continue
        files += 1
        size += member.size
        if files > max_files or size > max_bytes:
            raise TarRefused(f"the stream holds more than the {max_files} files, {max_bytes} bytes the board announced")
        if out.parent not in made:
            out.parent.mkdir(parents=True, exist_ok=True)
            made.add(out.parent)
        _write(reader, out, member)


def _next_member(reader: _Reader) -> tarfile.TarInfo | None:
    """The next regular file or directory, its name and size from the pax or GNU long-name header before it;
    None at the end of the archive."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = reader.exact(BLOCK, "a header")
        if block == bytes(BLOCK):
            return None
        try:
            member = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarRefused(f"not a tar header: {exc}") from None
        if member.type in NAME_TYPES:
            if not 0 <= member.size <= HEADER_LIMIT:
                raise TarRefused(f"a {'pax' if member.type == tarfile.XHDTYPE else 'long-name'} header of "
                                 f"{member.size} bytes (the limit is {HEADER_LIMIT})")
            data = reader.exact(member.size, "a header")[: member.size]
            if member.type == tarfile.XHDTYPE:
                pax.update(_pax_records(data))
            else:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if member.type not in FILE_TYPES and member.type != tarfile.DIRTYPE:
            raise TarRefused(f"refusing link or special file in pulled outputs: {member.name!r} "
                             f"(tar type {member.type!r})")
        if member.sparse is not None:
            raise TarRefused(f"refusing sparse member {member.name!r}")
        member.name = pax.get("path", long_name if long_name is not None else member.name)
        if "size" in pax:
            member.size = _number(pax["size"], "size")
        if member.size < 0:
            raise TarRefused(f"member {member.name!r} has a negative size")
        return member


def _pax_records(data: bytes) -> dict[str, str]:
    """A pax header's ``LENGTH KEY=VALUE\\n`` records; sparse files (``GNU.sparse.*``) refused."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        length = _number(data[pos:space], "record length") if space > pos else 0
        record = data[space + 1 : pos + length]
        if length < 5 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarRefused("a malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        name = key.decode("utf-8", "surrogateescape")
        if name.startswith("GNU.sparse"):
            raise TarRefused("refusing a sparse member (pax GNU.sparse header)")
        out[name] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _number(text: str | bytes, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TarRefused(f"a pax header with a bad {what}: {text[:40]!r}") from None


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if "\0" in name or path.is_absolute() or not path.parts or any(p in ("..", "") for p in path.parts):
        raise TarRefused(f"refusing unsafe path in pulled outputs: {name[:300]!r}")
    return path


def _write(reader: _Reader, out: Path, member: tarfile.TarInfo) -> None:
    """The member's content into a new file ``out`` (never through a link, never over another file)."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise TarRefused(f"the stream holds {member.name!r} twice") from None
    with open(fd, "wb", buffering=0) as f:
        left = member.size
        while left:
            data = reader.some(min(left, PIECE), member.name)
            f.write(data)
            left -= len(data)
    reader.skip(0, member.size)


class _Reader:
    """``read(n)`` as exact reads; the end of the stream inside a member or header is a TarRefused."""

    def __init__(self, read: Callable[[int], bytes]):
        self.read = read

    def some(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if not data:
            raise TarRefused(f"the stream ended inside {what[:200]!r}")
        return data

    def exact(self, n: int, what: str) -> bytes:
        """``n`` bytes rounded up to whole blocks (a header's data is padded), at least ``n``."""
        want = -(-n // BLOCK) * BLOCK
        parts, got = [], 0
        while got < want:
            data = self.some(want - got, what)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def skip(self, n: int, size: int) -> None:
        """Skip ``n`` bytes of data plus the padding after ``size`` bytes of a member."""
        left = n + (-size % BLOCK)
        while left:
            left -= len(self.some(min(left, PIECE), "padding"))

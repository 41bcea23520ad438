"""What a file really is: its media type from its content (magic bytes first, then its
extension, then the client's declared type, which is only a hint), and a safe filename."""

from __future__ import annotations

import re
import unicodedata
import zipfile
from pathlib import Path

from services.runtime.errors import InvalidArgument

FILENAME_MAX_CHARS = 255

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
ZIP = "application/zip"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
CSV = "text/csv"
JSON = "application/json"
PNG, JPEG, GIF, WEBP = "image/png", "image/jpeg", "image/gif", "image/webp"

IMAGE_TYPES = frozenset({PNG, JPEG, GIF, WEBP})
TEXT_TYPES = frozenset({TEXT, MARKDOWN, HTML, CSV, JSON})
# Types with text to extract.
EXTRACTABLE = TEXT_TYPES | {PDF, DOCX}

_BY_EXTENSION = {
    ".txt": TEXT, ".text": TEXT, ".log": TEXT,
    ".md": MARKDOWN, ".markdown": MARKDOWN,
    ".html": HTML, ".htm": HTML, ".xhtml": HTML,
    ".csv": CSV,
    ".json": JSON,
    ".pdf": PDF,
    ".docx": DOCX,
    ".png": PNG, ".jpg": JPEG, ".jpeg": JPEG, ".gif": GIF, ".webp": WEBP,
}
_DECLARED_ALIASES = {"text/x-markdown": MARKDOWN, "application/xhtml+xml": HTML, "text/json": JSON,
                     "application/csv": CSV, "text/x-csv": CSV}

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators and bidi
# overrides, none of which belong in a name shown to people.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def sanitize_filename(raw: str) -> str:
    """The name without any directory part or control characters, NFC-normalised.

    `../../etc/passwd` becomes `passwd`; a name with nothing left is INVALID_ARGUMENT. The
    name is only ever shown back: storage paths never derive from it.
    """
    name = unicodedata.normalize("NFC", raw)
    name = _UNSAFE.sub("", name)
    name = re.split(r"[/\\]", name)[-1].strip()
    if name in ("", ".", ".."):
        raise InvalidArgument.for_field("metadata.filename", "must name a file (after dropping directories and control characters)",
                                        reason="FILENAME_INVALID")
    if len(name) > FILENAME_MAX_CHARS:
        raise InvalidArgument.for_field("metadata.filename", f"must have at most {FILENAME_MAX_CHARS} characters",
                                        reason="FILENAME_TOO_LONG")
    return name


def normalize_declared(media_type: str) -> str:
    base = media_type.split(";", 1)[0].strip().lower()
    return _DECLARED_ALIASES.get(base, base)


def _magic(head: bytes) -> str | None:
    if head.lstrip(b"\x00\t\r\n \xef\xbb\xbf")[:5] == b"%PDF-":
        return PDF
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return ZIP
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


def _looks_binary(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a byte-order mark
        return False
    return b"\x00" in head


def _is_docx(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return "word/document.xml" in names and "[Content_Types].xml" in names


def detect_media_type(head: bytes, path: Path, filename: str, declared: str) -> str:
    """The media type from the content; the extension and the declared type only choose
    among text formats, which have no magic bytes."""
    magic = _magic(head)
    if magic == ZIP:
        return DOCX if _is_docx(path) else ZIP
    if magic is not None:
        return magic
    if not head:
        by_name = _BY_EXTENSION.get(Path(filename).suffix.lower())
        return by_name if by_name in TEXT_TYPES else TEXT
    if _looks_binary(head):
        return OCTET_STREAM
    by_name = _BY_EXTENSION.get(Path(filename).suffix.lower())
    if by_name in TEXT_TYPES:
        return by_name
    declared = normalize_declared(declared)
    if declared in TEXT_TYPES:
        return declared
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return HTML
    return TEXT


def describe(media_type: str) -> str:
    names = {PDF: "a PDF", DOCX: "a Word document (DOCX)", ZIP: "a ZIP archive", OCTET_STREAM: "unrecognised binary data",
             TEXT: "plain text", MARKDOWN: "Markdown", HTML: "HTML", CSV: "CSV", JSON: "JSON"}
    if media_type in IMAGE_TYPES:
        return f"an image ({media_type})"
    return names.get(media_type, media_type)

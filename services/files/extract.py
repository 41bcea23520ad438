"""Text extraction for txt, md, html, pdf, docx, csv and json, page numbers kept.

Runs in a worker thread (CPU-bound, blocking). Every failure is an `ExtractionError` whose
message tells a person what to do; nothing here trusts the input's own claims about sizes.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser

from services.files import sniff
from services.files.models import ErrorCode


@dataclass(frozen=True)
class Limits:
    # DOCX is a ZIP archive: the sum of its members' uncompressed sizes is capped before
    # anything is decompressed (a zip bomb answers an error, not an out-of-memory).
    max_docx_uncompressed_bytes: int = 256 * 1024 * 1024
    max_docx_members: int = 10_000
    # Text kept per file; more is an error rather than a silent cut.
    max_text_chars: int = 50_000_000


@dataclass(frozen=True)
class Extracted:
    text: str
    # Character offsets where each page starts (page 1 at 0); empty for unpaged formats.
    page_starts: tuple[int, ...] = ()

    @property
    def page_count(self) -> int:
        return len(self.page_starts)


class ExtractionError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ExtractionError:
    return ExtractionError(ErrorCode.INVALID_FILE, message)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark) or BOM-marked UTF-16. Anything else is an
    error naming the first bad byte: guessing a legacy encoding would index garbage."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise _invalid("The text claims UTF-16 (byte-order mark) but is not valid UTF-16; save it as UTF-8 and upload it again.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(
            f"The text is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8 and upload it again."
        ) from None


# -- HTML ------------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}
_BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
          "article", "header", "footer", "blockquote", "pre", "hr", "dd", "dt", "title", "main", "nav", "aside",
          "figcaption", "form"}


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        if tag in _BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP and self._skip:
            self._skip -= 1
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.parts.append(data)


def _html_charset(data: bytes) -> str | None:
    match = re.search(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", data[:4096], re.IGNORECASE)
    return match.group(1).decode("ascii").lower() if match else None


def extract_html(data: bytes) -> Extracted:
    charset = _html_charset(data)
    if charset and charset not in ("utf-8", "utf8") and not data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        try:
            source = data.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise _invalid(f"The page declares the charset {charset!r} but is not valid in it; save it as UTF-8 and upload it again.") from None
    else:
        source = decode_text(data)
    parser = _HTMLText()
    parser.feed(source)
    parser.close()
    title = " ".join("".join(parser.title).split())
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    body = "\n".join(line for line in lines if line)
    return Extracted(_clean(f"{title}\n{body}" if title else body))


# -- PDF -------------------------------------------------------------------------------------


def extract_pdf(data: bytes) -> Extracted:
    import pypdf
    from pypdf.errors import FileNotDecryptedError, PdfReadError, PyPdfError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many PDFs are "encrypted" with an empty user password only to set permissions.
            try:
                opened = reader.decrypt("")
            except (NotImplementedError, PyPdfError):
                opened = 0
            if not opened:
                raise ExtractionError(ErrorCode.INVALID_FILE,
                                      "The PDF is password-protected; upload an unprotected copy.")
        texts, starts, offset = [], [], 0
        for page in reader.pages:
            text = _clean(page.extract_text() or "").strip()
            starts.append(offset)
            texts.append(text)
            offset += len(text) + 2
    except ExtractionError:
        raise
    except FileNotDecryptedError:
        raise ExtractionError(ErrorCode.INVALID_FILE, "The PDF is password-protected; upload an unprotected copy.") from None
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            AssertionError, OSError, zipfile.BadZipFile, UnicodeError) as exc:
        raise _invalid(f"The PDF could not be read ({type(exc).__name__}: it is damaged or not really a PDF); "
                       "export or save it again and upload the new copy.") from None
    if not starts:
        raise _invalid("The PDF has no pages.")
    text = "\n\n".join(texts)
    if not text.strip():
        raise _invalid("The PDF has no extractable text (it may be scanned images); "
                       "upload a PDF with a text layer, or the text itself.")
    return Extracted(text, tuple(starts))


# -- DOCX ------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _check_archive(data: bytes, limits: Limits) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise _invalid("The Word document is damaged (not a readable ZIP archive); save it again and upload the new copy.") from None
    if len(members) > limits.max_docx_members:
        raise _invalid(f"The Word document has {len(members)} parts, more than the {limits.max_docx_members} allowed.")
    # zipfile stops each member at its declared size (and fails the CRC if the data was
    # longer), so capping the declared total caps what parsing can decompress.
    total = sum(member.file_size for member in members)
    if total > limits.max_docx_uncompressed_bytes:
        raise _invalid(
            f"The Word document would decompress to {total:,} bytes, over the limit of "
            f"{limits.max_docx_uncompressed_bytes:,} (it may be a zip bomb); remove large embedded objects and try again."
        )


def extract_docx(data: bytes, limits: Limits) -> Extracted:
    _check_archive(data, limits)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
        body = document.element.body
        pages: list[list[str]] = [[]]
        explicit_break_pending = False

        def paragraph_text(element) -> str:
            nonlocal explicit_break_pending
            out: list[str] = []
            for node in element.iter():
                tag = node.tag
                if tag == f"{_W}t" and node.text:
                    out.append(node.text)
                    explicit_break_pending = False
                elif tag == f"{_W}tab":
                    out.append("\t")
                elif tag == f"{_W}br":
                    if node.get(f"{_W}type") == "page":
                        pages[-1].append("".join(out))
                        out.clear()
                        pages.append([])
                        explicit_break_pending = True
                    else:
                        out.append("\n")
                elif tag == f"{_W}lastRenderedPageBreak":
                    # Word's own record of where its last layout broke pages; skipped right
                    # after an explicit break, which it duplicates.
                    if not explicit_break_pending and (out or any(pages[-1])):
                        pages[-1].append("".join(out))
                        out.clear()
                        pages.append([])
            return "".join(out)

        for block in body.iterchildren():
            if block.tag == f"{_W}p":
                pages[-1].append(paragraph_text(block))
            elif block.tag == f"{_W}tbl":
                for row in block.iter(f"{_W}tr"):
                    cells = [" ".join(paragraph_text(p) for p in cell.iter(f"{_W}p")) for cell in row.iter(f"{_W}tc")]
                    pages[-1].append(" | ".join(c.strip() for c in cells))
    except ExtractionError:
        raise
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile, OSError, AttributeError, TypeError) as exc:
        raise _invalid(f"The Word document could not be read ({type(exc).__name__}); save it again as .docx and upload the new copy.") from None
    except Exception as exc:  # noqa: BLE001 - lxml's XMLSyntaxError and friends
        raise _invalid(f"The Word document could not be read ({type(exc).__name__}); save it again as .docx and upload the new copy.") from None
    texts, starts, offset = [], [], 0
    for paragraphs in pages:
        text = _clean("\n".join(p for p in paragraphs if p.strip())).strip()
        starts.append(offset)
        texts.append(text)
        offset += len(text) + 2
    text = "\n\n".join(texts)
    if not text.strip():
        raise _invalid("The Word document has no text.")
    return Extracted(text, tuple(starts))


# -- CSV and JSON ----------------------------------------------------------------------------


def extract_csv(data: bytes) -> Extracted:
    text = decode_text(data)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise _invalid(f"The CSV could not be parsed ({exc}); check its quoting and upload it again.") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return Extracted("")
    header, lines = rows[0], [" | ".join(rows[0])]
    # Each row as "column: value" pairs, so a chunk stays meaningful away from the header.
    for row in rows[1:]:
        pairs = [f"{header[i].strip() if i < len(header) and header[i].strip() else f'column {i + 1}'}: {cell.strip()}"
                 for i, cell in enumerate(row) if cell.strip()]
        lines.append("; ".join(pairs))
    return Extracted(_clean("\n".join(lines)))


def _flatten(value, path: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    else:
        rendered = value if isinstance(value, str) else json.dumps(value)
        out.append(f"{path}: {rendered}" if path else str(rendered))


def extract_json(data: bytes) -> Extracted:
    text = decode_text(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid(f"The JSON is not valid (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix it and upload it again.") from None
    except RecursionError:
        raise _invalid("The JSON is nested too deeply to read.") from None
    out: list[str] = []
    try:
        _flatten(value, "", out)
    except RecursionError:
        raise _invalid("The JSON is nested too deeply to read.") from None
    return Extracted(_clean("\n".join(out)))


def extract(data: bytes, media_type: str, limits: Limits, *, declared: str = "") -> Extracted:
    """The text of a file whose content was detected as `media_type`."""
    if media_type == sniff.PDF:
        result = extract_pdf(data)
    elif media_type == sniff.DOCX:
        result = extract_docx(data, limits)
    elif media_type == sniff.HTML:
        result = extract_html(data)
    elif media_type == sniff.CSV:
        result = extract_csv(data)
    elif media_type == sniff.JSON:
        result = extract_json(data)
    elif media_type in (sniff.TEXT, sniff.MARKDOWN):
        result = Extracted(_clean(decode_text(data)))
    else:
        declared = sniff.normalize_declared(declared)
        lie = (f" It was declared as {declared}, but its content is {sniff.describe(media_type)}."
               if declared and declared != media_type and declared != sniff.OCTET_STREAM else "")
        raise ExtractionError(
            ErrorCode.UNSUPPORTED_FILE,
            f"No text can be extracted from {sniff.describe(media_type)}.{lie} "
            "Supported: txt, md, html, pdf, docx, csv, json.",
        )
    if len(result.text) > limits.max_text_chars:
        raise _invalid(f"The file has {len(result.text):,} characters of text, over the limit of {limits.max_text_chars:,}; split it into smaller files.")
    return result

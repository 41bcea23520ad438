"""Documents generated for the tests: multi-page PDFs (fpdf2), Word files (python-docx),
HTML pages, and hostile variants (encrypted, corrupt, zip bomb)."""

from __future__ import annotations

import io
import zipfile


def pdf(pages: list[str], *, password: str | None = None) -> bytes:
    from fpdf import FPDF

    document = FPDF()
    document.set_font("Helvetica", size=11)
    for text in pages:
        document.add_page()
        document.multi_cell(0, 5, text)
    if password is not None:
        document.set_encryption(owner_password="owner-" + password, user_password=password)
    return bytes(document.output())


def docx(pages: list[list[str]]) -> bytes:
    """A Word document with an explicit page break between the given pages of paragraphs."""
    import docx as python_docx

    document = python_docx.Document()
    for number, paragraphs in enumerate(pages):
        if number:
            document.add_page_break()
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_bomb(uncompressed_bytes: int) -> bytes:
    """A valid-looking .docx whose document.xml decompresses to `uncompressed_bytes`."""
    base = docx([["A harmless looking document."]])
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename))
        # Highly compressible padding: a few hundred KiB on the wire.
        with target.open("word/media/padding.bin", "w", force_zip64=True) as padding:
            block = b"\0" * (1024 * 1024)
            for _ in range(uncompressed_bytes // len(block)):
                padding.write(block)
    return out.getvalue()


def html(title: str, paragraphs: list[str]) -> bytes:
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + title + "</title>"
        "<style>body { font-family: sans-serif; }</style><script>var tracking = 'do not index me';</script></head>"
        "<body><nav><a href='/'>Home</a></nav><main><h1>" + title + "</h1>" + body + "</main></body></html>"
    ).encode()

"""Links to files the code interpreter produced become FilePath annotations whose span is the
link, however the model's text is split into deltas; other links and unknown files do not."""

from __future__ import annotations

from services.assistants.citations import CitationStream

FILES = {"bars.png": "file-bars", "out/report v2.csv": "file-report"}


def stream(pieces: list[str], files=FILES):
    citations = CitationStream([], files=files)
    text, annotations = "", []
    for piece in pieces:
        sent, found = citations.feed(piece)
        text += sent
        annotations += found
    sent, found = citations.finish()
    return text + sent, annotations + found, citations.annotations


def test_a_link_split_across_deltas_is_one_annotation_with_its_span_in_code_points():
    whole = "Voilà 📊 [chart](sandbox:/mnt/data/bars.png). Done."
    pieces = [whole[i:i + 3] for i in range(0, len(whole), 3)]
    text, streamed, final = stream(pieces)
    assert text == whole
    [annotation] = streamed
    assert final == streamed
    assert annotation.file_path.file_id == "file-bars"
    assert annotation.text == "sandbox:/mnt/data/bars.png"
    assert text[annotation.start_index:annotation.end_index] == "sandbox:/mnt/data/bars.png"


def test_trailing_punctuation_and_percent_escapes_and_a_link_at_the_very_end():
    text, annotations, _ = stream(["See sandbox:/mnt/data/out/report%20v2.csv, and sandbox:/mnt/",
                                   "data/bars.png"])
    assert [(a.text, a.file_path.file_id) for a in annotations] == [
        ("sandbox:/mnt/data/out/report%20v2.csv", "file-report"), ("sandbox:/mnt/data/bars.png", "file-bars")]
    for a in annotations:
        assert text[a.start_index:a.end_index] == a.text


def test_a_file_not_produced_in_the_run_or_no_files_at_all_gives_no_annotation():
    assert stream(["sandbox:/mnt/data/other.png"])[1] == []
    text, annotations, _ = stream(["sandbox:/mnt/data/bars.png"], files={})
    assert (text, annotations) == ("sandbox:/mnt/data/bars.png", [])

"""Hybrid search beats either half alone on a small labelled set: exact identifiers (error
codes, part numbers) that only full-text search pins down among near-identical neighbours,
and paraphrases that share no word with their passage, which only embeddings find."""

from __future__ import annotations

from parley.files.v1 import files_pb2 as pb
from parley.files.v1 import files_service_pb2 as api
from tests.files.conftest import search, upload, wait_entry

# Identifiers: each is mentioned once inside a long log entry about something else, while
# short notes carry look-alike codes. To an embedding, "E-4471" looks most like the short
# notes about E-4417 or E-7144; only full-text search pins the exact code down.
_LOG = ("Shift report from the packaging hall. The morning crew restocked the label printers, inspected the "
        "optical sensors on line two, and logged {code} once before lunch while swapping a worn roller. "
        "Production resumed after a short pause, output met the daily target, and the evening crew was "
        "briefed on the new pallet wrapping procedure and the revised rota for {topic}.")
CODES = {
    "log-a.txt": _LOG.format(code="fault E-4471", topic="the freezer aisle"),
    "log-b.txt": _LOG.format(code="part X93K-220", topic="the loading dock"),
    "log-c.txt": _LOG.format(code="alarm Q-5182", topic="the boiler room"),
}
DISTRACTORS = {
    "note-1.txt": "Fault E-4417: belt speed out of range.",
    "note-2.txt": "Fault E-7144: motor temperature out of range.",
    "note-3.txt": "Fault E-4714: sensor offline.",
    "note-4.txt": "Part X39K-202: right hinge.",
    "note-5.txt": "Part X93K-202: left hinge.",
    "note-6.txt": "Alarm Q-5128: pressure high.",
    "note-7.txt": "Alarm Q-8152: pressure low.",
}
# Passages found by meaning: their questions below use none of their words.
MEANINGS = {
    "vacation.txt": "Employees accrue annual leave at two days per month and must book holidays with their manager.",
    "expenses.txt": "Receipts for travel costs must be submitted within a week to be reimbursed.",
    "security.txt": "Badges must be worn visibly on the premises, and visitors need an escort at all times.",
    "kitchen.txt": "The refrigerator is emptied every Friday afternoon; label your containers with your name.",
    "parking.txt": "Cars may be left in the underground garage; the barrier opens with the staff card.",
}
QUERIES = [
    ("E-4471", "log-a.txt"),
    ("X93K-220", "log-b.txt"),
    ("Q-5182", "log-c.txt"),
    ("how many days off do staff get each year", "vacation.txt"),
    ("getting paid back for a business trip", "expenses.txt"),
    ("do guests have to be accompanied", "security.txt"),
    ("when is the fridge cleaned out", "kitchen.txt"),
    ("where can I put my automobile", "parking.txt"),
]


async def test_hybrid_beats_vector_only_and_text_only(stub, as_user):
    me = as_user("hybrid-judge")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="labelled"), metadata=me)
    names = {}
    for name, text in {**CODES, **DISTRACTORS, **MEANINGS}.items():
        file = await upload(stub, me, text.encode(), name)
        names[file.id] = name
        await stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=file.id), metadata=me)
    for file_id in names:
        assert (await wait_entry(stub, me, store.id, file_id)).status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED

    async def hits(mode) -> dict[str, bool]:
        found = {}
        for query, expected in QUERIES:
            response = await search(stub, me, [store.id], query, max_num_results=5,
                                    ranking_options=pb.RankingOptions(mode=mode))
            found[query] = bool(response.results) and names[response.results[0].file_id] == expected
        return found

    hybrid, vector, text = (await hits(pb.RANKING_MODE_HYBRID), await hits(pb.RANKING_MODE_VECTOR),
                            await hits(pb.RANKING_MODE_TEXT))
    report = {q: (hybrid[q], vector[q], text[q]) for q, _ in QUERIES}
    print("top-1 hits (hybrid, vector, text):", report)
    # Each half misses what the other finds; the fusion finds everything.
    assert all(hybrid.values()), report
    assert sum(hybrid.values()) > sum(vector.values()), report
    assert sum(hybrid.values()) > sum(text.values()), report
    assert not all(text[q] for q, _ in QUERIES[3:]), report  # paraphrases defeat text search
    assert all(text[q] for q, _ in QUERIES[:3]), report  # identifiers are text search's strength


async def test_extreme_fusion_weights_rank_like_their_ratio(stub, as_user):
    """Defect 5: `vector_weight: 5e-324` answered INTERNAL (float8 underflow in PostgreSQL).
    Weights only matter by their ratio, so extreme ones rank as their ratio says."""
    me = as_user("weights-judge")
    store = await stub.CreateVectorStore(api.CreateVectorStoreRequest(name="weights"), metadata=me)
    for name in ("log-a.txt", "note-1.txt", "vacation.txt"):
        file = await upload(stub, me, {**CODES, **DISTRACTORS, **MEANINGS}[name].encode(), name)
        await stub.AddVectorStoreFile(api.AddVectorStoreFileRequest(vector_store_id=store.id, file_id=file.id), metadata=me)
        assert (await wait_entry(stub, me, store.id, file.id)).status == pb.VECTOR_STORE_FILE_STATUS_COMPLETED

    async def scores(**weights) -> list[tuple[str, float]]:
        response = await search(stub, me, [store.id], "E-4471 fault", max_num_results=5,
                                ranking_options=pb.RankingOptions(mode=pb.RANKING_MODE_HYBRID, **weights))
        return [(r.file_id, round(r.score, 9)) for r in response.results]

    text_only = await scores(vector_weight=0.0, text_weight=1.0)
    assert text_only
    assert await scores(vector_weight=5e-324, text_weight=1.0) == text_only
    assert await scores(vector_weight=1.0, text_weight=5e-324) == await scores(vector_weight=1.0, text_weight=0.0)
    assert await scores(vector_weight=1e308, text_weight=1e308) == await scores()


def test_fusion_weights_are_scaled_to_the_larger():
    from services.files.stores import fusion_weights

    assert fusion_weights(5e-324, 1.0) == (0.0, 1.0)
    assert fusion_weights(1e308, 1e308) == (1.0, 1.0)
    assert fusion_weights(2.0, 0.5) == (1.0, 0.25)
    assert fusion_weights(5e-324, 0.0) == (1.0, 0.0)

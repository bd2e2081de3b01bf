from __future__ import annotations

import json
import pickle
from collections import Counter

import pandas as pd
import pyarrow as pa
import pytest

from distillery import lake
from distillery.errors import SeedError
from distillery.seed import import_seeds, load_split, read_seed_file, split_seeds, validate_seeds
from distillery.synth import LABELS

DOCS = pd.DataFrame({
    "sha256": [f"{i:064x}" for i in range(1, 6)],
    "name": [f"case-{i:05d}.pdf" for i in range(1, 6)],
    "path": [f"/corpus/case-{i:05d}.pdf" for i in range(1, 6)],
})


def _seeds(*rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["document", "answer"])


def _problems(df, spec, path="seeds.csv", docs=DOCS) -> list[str]:
    with pytest.raises(SeedError) as err:
        validate_seeds(df, docs, spec, path)
    return err.value.problems


# ---- read_seed_file ----------------------------------------------------------------------------

ROWS = [{"document": "case-00001.pdf", "answer": "Pneumonia"}, {"document": "case-00002.pdf", "answer": "Migraine"}]


def test_csv_jsonl_and_parquet_seed_files_read_the_same(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "s.csv", index=False)
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pd.DataFrame(ROWS).to_parquet(tmp_path / "s.parquet")
    for name in ("s.csv", "s.jsonl", "s.parquet"):
        assert read_seed_file(tmp_path / name).to_dict("records") == ROWS, name


def test_csv_cells_stay_strings(tmp_path):
    (tmp_path / "s.csv").write_text("document,answer\n00123,NA\nx.pdf,\n")
    df = read_seed_file(tmp_path / "s.csv")
    assert df.to_dict("records") == [{"document": "00123", "answer": "NA"}, {"document": "x.pdf", "answer": ""}]


def test_jsonl_skips_blank_lines(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n")
    assert len(read_seed_file(tmp_path / "s.jsonl")) == 2


def test_latin1_csv_is_rejected_with_a_hint_to_save_as_utf8(tmp_path):
    (tmp_path / "s.csv").write_bytes("document,answer\ncafé-à-paris.pdf,Pneumonia\n".encode("latin-1"))
    with pytest.raises(SeedError) as err:
        read_seed_file(tmp_path / "s.csv")
    assert "UTF-8" in err.value.problems[0]
    assert str(tmp_path / "s.csv") in str(err.value)


def test_latin1_jsonl_is_rejected(tmp_path):
    (tmp_path / "s.jsonl").write_bytes('{"document": "café.pdf", "answer": "Migraine"}\n'.encode("latin-1"))
    with pytest.raises(SeedError, match="UTF-8"):
        read_seed_file(tmp_path / "s.jsonl")


def test_bad_jsonl_line_is_named_by_number(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(SeedError) as err:
        read_seed_file(tmp_path / "s.jsonl")
    assert err.value.problems[0].startswith("line 2")


def test_missing_seed_file_is_a_seed_error(tmp_path):
    with pytest.raises(SeedError) as err:
        read_seed_file(tmp_path / "nope.csv")
    assert err.value.problems == ["file not found"]


def test_unsupported_extension_is_a_seed_error(tmp_path):
    (tmp_path / "s.xlsx").write_bytes(b"PK")
    with pytest.raises(SeedError, match="unsupported extension"):
        read_seed_file(tmp_path / "s.xlsx")


def test_unreadable_parquet_is_a_seed_error(tmp_path):
    (tmp_path / "s.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SeedError, match="cannot read"):
        read_seed_file(tmp_path / "s.parquet")


def test_seed_error_survives_pickling():
    err = SeedError("seeds.csv", ["row 2: empty answer"])
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.problems, str(back)) == (err.path, err.problems, str(err))


# ---- validate_seeds ----------------------------------------------------------------------------

def test_documents_are_found_by_name_path_or_sha256(clinical_spec):
    df = _seeds(("case-00001.pdf", "Pneumonia"), ("/corpus/case-00002.pdf", "Migraine"), (DOCS.sha256[2], "Migraine"),
                ("/elsewhere/case-00004.pdf", "Migraine"))
    rows = validate_seeds(df, DOCS, clinical_spec, "seeds.csv")
    assert rows["sha256"].tolist() == DOCS.sha256[:4].tolist()
    assert rows["document"].tolist()[0] == "case-00001.pdf"


@pytest.fixture
def twin_corpus(tmp_path, clinical_raw):
    """Two different `example.pdf` in two subfolders and one `other.pdf`, ingested; a spec beside them."""
    from distillery import ingest, synth
    from distillery.spec import parse_spec

    for i, where in enumerate(["a/example.pdf", "b/c/example.pdf", "other.pdf"]):
        (tmp_path / "pdfs" / where).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pdfs" / where).write_bytes(synth.case_pdf(synth.make_case(i), i))
    raw = {k: v for k, v in clinical_raw.items() if k != "profiles"}
    spec = parse_spec(dict(raw, source="pdfs", ingest={"workers": 1}), root=tmp_path)
    docs = lake.read_table(ingest.ingest(spec, out=tmp_path / "ingest").path("documents")).to_pandas()
    return spec, docs


def test_a_name_two_documents_share_is_an_error_listing_both(twin_corpus):
    spec, docs = twin_corpus
    (problem,) = _problems(_seeds(("example.pdf", "Pneumonia"), ("other.pdf", "Migraine")), spec, docs=docs)
    assert problem.startswith("row 2:") and "ambiguous" in problem
    assert "a/example.pdf" in problem and "b/c/example.pdf" in problem


def test_a_shared_name_is_matched_by_its_path_under_the_source_or_its_hash(twin_corpus):
    spec, docs = twin_corpus
    by_path = dict(zip(docs["path"], docs["sha256"]))
    a, b = by_path[str(spec.path("pdfs/a/example.pdf"))], by_path[str(spec.path("pdfs/b/c/example.pdf"))]
    rows = validate_seeds(_seeds(("a/example.pdf", "Pneumonia"), ("./b\\c\\example.pdf", "Migraine"),
                                 ("other.pdf", "Migraine")), docs, spec, "seeds.csv")
    assert rows["sha256"].tolist()[:2] == [a, b]
    rows = validate_seeds(_seeds((b, "Pneumonia")), docs, spec, "seeds.csv")
    assert rows["sha256"].tolist() == [b]


def test_label_is_stored_with_the_spec_spelling(clinical_spec):
    rows = validate_seeds(_seeds(("case-00001.pdf", " pneumonia ")), DOCS, clinical_spec, "seeds.csv")
    assert rows["answer"].tolist() == ["Pneumonia"]


def test_missing_column_is_named(clinical_spec):
    with pytest.raises(SeedError) as err:
        validate_seeds(pd.DataFrame({"file": ["a.pdf"], "answer": ["Pneumonia"]}), DOCS, clinical_spec, "seeds.csv")
    (problem,) = err.value.problems
    assert "document" in problem and "file" in problem


def test_unknown_label_is_named_with_its_row(clinical_spec):
    (problem,) = _problems(_seeds(("case-00001.pdf", "Pneumonia"), ("case-00002.pdf", "Influenza")), clinical_spec)
    assert problem.startswith("row 3:")
    assert "unknown label 'Influenza'" in problem


def test_answer_that_merely_mentions_a_label_is_an_unknown_label(clinical_spec):
    (problem,) = _problems(_seeds(("case-00001.pdf", "probably pneumonia")), clinical_spec)
    assert "unknown label" in problem


@pytest.mark.parametrize("answer", ["", "   ", None])
def test_empty_answer_is_named_with_its_row(clinical_spec, answer):
    (problem,) = _problems(_seeds(("case-00001.pdf", answer)), clinical_spec)
    assert problem == "row 2: empty answer"


def test_duplicate_document_names_both_rows(clinical_spec):
    df = _seeds(("case-00001.pdf", "Pneumonia"), ("case-00002.pdf", "Migraine"), ("/corpus/case-00001.pdf", "Migraine"))
    (problem,) = _problems(df, clinical_spec)
    assert problem.startswith("row 4:")
    assert "duplicate document" in problem and "row 2" in problem


def test_document_not_in_corpus_is_named_with_its_row(clinical_spec):
    (problem,) = _problems(_seeds(("case-99999.pdf", "Pneumonia")), clinical_spec)
    assert problem.startswith("row 2:")
    assert "case-99999.pdf" in problem and "not in the corpus" in problem


def test_empty_document_is_named_with_its_row(clinical_spec):
    (problem,) = _problems(_seeds(("  ", "Pneumonia")), clinical_spec)
    assert problem == "row 2: empty document"


def test_every_problem_is_reported_at_once(clinical_spec):
    df = _seeds(
        ("case-00001.pdf", "Pneumonia"),   # row 2: fine
        ("case-00002.pdf", "Influenza"),   # row 3: unknown label
        ("case-00001.pdf", "Migraine"),    # row 4: duplicate
        ("case-00003.pdf", ""),            # row 5: empty answer
        ("case-77777.pdf", "Migraine"),    # row 6: not in corpus
    )
    problems = _problems(df, clinical_spec)
    assert [p.split(":")[0] for p in problems] == ["row 3", "row 4", "row 5", "row 6"]
    assert ["unknown label" in problems[0], "duplicate" in problems[1], "empty answer" in problems[2],
            "not in the corpus" in problems[3]] == [True] * 4


def test_one_row_can_have_two_problems(clinical_spec):
    problems = _problems(_seeds(("case-77777.pdf", "Influenza")), clinical_spec)
    assert len(problems) == 2 and all(p.startswith("row 2:") for p in problems)


def test_rows_of_a_jsonl_file_are_counted_from_one(clinical_spec):
    (problem,) = _problems(_seeds(("case-00001.pdf", "Influenza")), clinical_spec, path="seeds.jsonl")
    assert problem.startswith("row 1:")


def test_seed_file_without_rows_is_an_error(clinical_spec):
    assert _problems(_seeds(), clinical_spec) == ["no seed rows"]


def test_extraction_answer_is_decoded_from_json_text(invoice_spec):
    value = {"vendor": "Acme", "number": "INV-1", "date": "2026-01-01", "total": 3.5, "currency": "EUR"}
    rows = validate_seeds(_seeds(("case-00001.pdf", json.dumps(value)), ("case-00002.pdf", value)), DOCS, invoice_spec,
                          "seeds.jsonl")
    assert rows["answer"].tolist() == [value, value]


def test_extraction_answer_missing_fields_names_them(invoice_spec):
    (problem,) = _problems(_seeds(("case-00001.pdf", {"vendor": "Acme", "total": 1})), invoice_spec, path="s.jsonl")
    assert problem.startswith("row 1:")
    assert "number" in problem and "date" in problem and "currency" in problem


@pytest.mark.parametrize("answer", ["Acme", "[1, 2]", 42])
def test_extraction_answer_must_be_a_json_object(invoice_spec, answer):
    (problem,) = _problems(_seeds(("case-00001.pdf", answer)), invoice_spec, path="s.jsonl")
    assert "not a JSON object" in problem


# ---- split_seeds -------------------------------------------------------------------------------

def _labelled(per_label: dict[str, int]) -> pd.DataFrame:
    answers = [label for label, n in per_label.items() for _ in range(n)]
    return pd.DataFrame({"document": [f"d{i}.pdf" for i in range(len(answers))], "answer": answers})


def test_split_gives_every_row_one_split(clinical_spec):
    rows = _labelled({label: 8 for label in LABELS})
    split = split_seeds(rows, clinical_spec)
    assert len(split) == len(rows)
    assert set(split) == {"train", "validation", "heldout"}


def test_split_is_stratified_by_label(clinical_spec):
    rows = _labelled({label: 8 for label in LABELS})
    split = split_seeds(rows, clinical_spec)
    per_label = Counter((a, s) for a, s in zip(rows["answer"], split))
    for label in LABELS:
        assert per_label[(label, "heldout")] == 2  # 25% of 8
        assert per_label[(label, "validation")] == 1  # 15% of the other 6, rounded
        assert per_label[(label, "train")] == 5


def test_split_is_deterministic(clinical_spec):
    rows = _labelled({label: 5 for label in LABELS})
    assert split_seeds(rows, clinical_spec) == split_seeds(rows.copy(), clinical_spec)


def test_split_seed_changes_which_rows_are_held_out(clinical_spec):
    rows = _labelled({label: 8 for label in LABELS})
    other = clinical_spec.model_copy(update={"seeds": clinical_spec.seeds.model_copy(update={"split_seed": 1})})
    assert split_seeds(rows, clinical_spec) != split_seeds(rows, other)


def test_a_label_with_one_seed_keeps_it_for_training(clinical_spec):
    split = split_seeds(_labelled({"Pneumonia": 1, "Migraine": 4}), clinical_spec)
    assert split[0] == "train"


def test_every_label_with_two_seeds_has_one_held_out(clinical_spec):
    rows = _labelled({label: 2 for label in LABELS})
    split = split_seeds(rows, clinical_spec)
    held = Counter(a for a, s in zip(rows["answer"], split) if s == "heldout")
    assert held == {label: 1 for label in LABELS}


def test_split_follows_row_positions_whatever_the_index(clinical_spec):
    rows = _labelled({label: 4 for label in LABELS})
    shuffled = rows.set_index(pd.Index(range(1000, 1000 + len(rows))))
    assert split_seeds(shuffled, clinical_spec) == split_seeds(rows, clinical_spec)


def test_extraction_seeds_are_split_as_one_stratum(invoice_spec):
    rows = pd.DataFrame({"document": [f"d{i}" for i in range(20)], "answer": [{"total": i} for i in range(20)]})
    assert Counter(split_seeds(rows, invoice_spec)) == {"heldout": 5, "validation": 2, "train": 13}


# ---- import_seeds end to end -------------------------------------------------------------------

def test_import_seeds_writes_split_labels_for_the_demo_seed_sheet(clinical_spec, tmp_path):
    sheet = read_seed_file(clinical_spec.path(clinical_spec.seeds.path))
    names = sorted(set(sheet["document"]))
    docs = pa.table({"sha256": [f"sha-{n}" for n in names], "name": names, "path": [f"/c/{n}" for n in names]})
    documents = lake.write_parquet(docs, tmp_path / "documents.parquet")
    result = import_seeds(clinical_spec, documents, out=tmp_path / "seed", run_id="seed-1")
    table = lake.read_table(result.path("seed_labels")).to_pandas()
    assert len(table) == len(sheet)
    assert sum(result.counts.values()) == len(sheet)
    assert set(table["split"]) == {"train", "validation", "heldout"}
    assert set(table["run_id"]) == {"seed-1"} and set(table["task"]) == {"clinical"}
    held = load_split(result.path("seed_labels"), "heldout")
    assert held and all(r["answer"] in LABELS for r in held)

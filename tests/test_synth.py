from __future__ import annotations

import pytest

from distillery import synth
from distillery.pdf import classify_bytes
from distillery.seed import read_seed_file


def test_make_case_is_deterministic():
    assert synth.make_case(17) == synth.make_case(17)
    assert synth.make_case(17, seed=3) == synth.make_case(17, seed=3)


def test_make_case_depends_on_the_seed():
    cases = [synth.make_case(i, seed=0) for i in range(10)]
    others = [synth.make_case(i, seed=1) for i in range(10)]
    assert [c.findings for c in cases] != [c.findings for c in others]
    assert [c.label for c in cases] == [c.label for c in others]


def test_labels_cycle_through_every_condition():
    assert [synth.make_case(i).label for i in range(len(synth.LABELS))] == synth.LABELS


@pytest.mark.parametrize("i", range(0, 40, 3))
def test_case_findings_belong_to_its_condition_and_the_distractor_to_another(i):
    case = synth.make_case(i)
    assert case.name == f"case-{i:05d}.pdf"
    assert len(set(case.findings)) == 3
    assert set(case.findings) <= set(synth.CONDITIONS[case.label])
    assert case.distractor not in synth.CONDITIONS[case.label]
    assert any(case.distractor in findings for findings in synth.CONDITIONS.values())


def test_case_pdf_is_byte_identical_across_calls():
    assert synth.case_pdf(synth.make_case(5), 5) == synth.case_pdf(synth.make_case(5), 5)


@pytest.mark.parametrize("i", range(12))
def test_case_pdf_never_names_its_condition(i):
    verdict, _, _, text = classify_bytes(synth.case_pdf(synth.make_case(i), i))
    assert verdict == "ok"
    flat = " ".join(text.split()).lower()
    assert all(label.lower() not in flat for label in synth.LABELS)


def test_planted_bad_files_get_the_verdict_the_truth_records(tmp_path):
    truth = synth.generate_clinical(tmp_path, n=8, bad_every=2)
    assert [r["planted"] for r in truth if r["planted"]] == ["corrupt", "encrypted", "zero_pages", "image_only"]
    for row in truth:
        verdict = classify_bytes((tmp_path / row["file"]).read_bytes())[0]
        assert verdict == row["verdict"], row["file"]


def test_bad_files_carry_no_label(tmp_path):
    truth = synth.generate_clinical(tmp_path, n=4, bad_every=2)
    assert [bool(r["label"]) for r in truth] == [True, False, True, False]


def test_bad_every_zero_plants_nothing(tmp_path):
    truth = synth.generate_clinical(tmp_path, n=3, bad_every=0)
    assert [r["verdict"] for r in truth] == ["ok", "ok", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [r["file"] for r in truth]


def test_generated_case_reports_are_reproducible(tmp_path):
    # bad_every=0: MuPDF's encryption salts every write, so planted encrypted files differ run to run
    synth.generate_clinical(tmp_path / "a", n=4, bad_every=0)
    synth.generate_clinical(tmp_path / "b", n=4, bad_every=0)
    for a in sorted((tmp_path / "a").iterdir()):
        assert a.read_bytes() == (tmp_path / "b" / a.name).read_bytes(), a.name


def test_corrupt_bytes_are_deterministic_per_index():
    assert synth.corrupt_bytes(3) == synth.corrupt_bytes(3) != synth.corrupt_bytes(4)


def test_zero_page_and_image_only_files_are_deterministic(good_bytes):
    assert synth.zero_page_pdf() == synth.zero_page_pdf()
    assert synth.image_only_pdf(good_bytes) == synth.image_only_pdf(good_bytes)


TRUTH = [{"file": f"f{i}.pdf", "label": "AB"[i % 2], "verdict": "ok" if i != 2 else "corrupt"} for i in range(10)]


def test_pick_seeds_takes_per_label_valid_documents():
    picked = synth.pick_seeds(TRUTH, per_label=2)
    assert picked == [{"document": "f0.pdf", "answer": "A"}, {"document": "f1.pdf", "answer": "B"},
                      {"document": "f3.pdf", "answer": "B"}, {"document": "f4.pdf", "answer": "A"}]


def test_pick_seeds_with_an_offset_picks_other_documents():
    first = {r["document"] for r in synth.pick_seeds(TRUTH, per_label=2)}
    second = {r["document"] for r in synth.pick_seeds(TRUTH, per_label=2, offset=2)}
    assert second and not first & second


def test_invoice_pdf_shows_its_fields(tmp_path):
    truth = synth.generate_invoices(tmp_path, n=2)
    for row in truth:
        verdict, _, _, text = classify_bytes((tmp_path / row["file"]).read_bytes())
        assert verdict == "ok"
        for value in (row["vendor"], row["number"], row["date"], f"{row['total']:.2f}", row["currency"]):
            assert value in text


def test_make_invoice_is_deterministic():
    assert synth.make_invoice(4) == synth.make_invoice(4)


def test_csv_and_jsonl_writers_round_trip_through_the_seed_reader(tmp_path):
    rows = [{"document": "case-00000.pdf", "answer": "Type 1 diabetes"}, {"document": "b.pdf", "answer": "Migraine"}]
    synth.write_csv(rows, tmp_path / "s.csv")
    synth.write_jsonl(rows, tmp_path / "s.jsonl")
    assert read_seed_file(tmp_path / "s.csv").to_dict("records") == rows
    assert read_seed_file(tmp_path / "s.jsonl").to_dict("records") == rows

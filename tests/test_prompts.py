from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distillery import excerpt
from distillery.prompts import (
    PREFILL,
    Answer,
    document_text,
    format_answer,
    match_label,
    parse_answer,
    prompt_hash,
    render_prompt,
    user_message,
)

LABELS = ["Type 1 diabetes", "Hypothyroidism", "Hyperthyroidism", "Iron deficiency anemia", "Pneumonia",
          "Myocardial infarction", "Appendicitis", "Migraine", "Lyme disease", "Kidney stones"]


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


# ---- classification ----------------------------------------------------------------------------

def test_prefilled_completion_ranks_labels_in_the_order_given(clinical_spec):
    answer = parse_answer(" Pneumonia; Migraine; Appendicitis", clinical_spec)
    assert answer.status == "ok"
    assert answer.ranked == ["Pneumonia", "Migraine", "Appendicitis"]
    assert answer.top == "Pneumonia"


def test_labels_are_matched_ignoring_case_and_returned_as_spelled_in_the_spec(clinical_spec):
    assert parse_answer(" type 1 DIABETES; lyme disease", clinical_spec).ranked == ["Type 1 diabetes", "Lyme disease"]


def test_numbered_list_answer_is_parsed(clinical_spec):
    text = " 1. Migraine\n2) Pneumonia\n- Kidney stones"
    assert parse_answer(text, clinical_spec).ranked == ["Migraine", "Pneumonia", "Kidney stones"]


def test_comma_separated_answer_is_parsed(clinical_spec):
    assert parse_answer(" Pneumonia, Migraine", clinical_spec).ranked == ["Pneumonia", "Migraine"]


def test_repeated_labels_count_once_and_the_ranking_is_cut_to_top_k(clinical_spec):
    text = " Pneumonia; pneumonia; Migraine; Appendicitis; Lyme disease"
    assert parse_answer(text, clinical_spec).ranked == ["Pneumonia", "Migraine", "Appendicitis"]


def test_similar_labels_are_not_confused(clinical_spec):
    assert parse_answer(" Hyperthyroidism; Hypothyroidism", clinical_spec).ranked == ["Hyperthyroidism", "Hypothyroidism"]


def test_answer_with_some_unknown_pieces_is_partial_and_keeps_the_known_labels(clinical_spec):
    answer = parse_answer(" Influenza; Pneumonia", clinical_spec)
    assert answer.status == "partial"
    assert answer.ok
    assert answer.ranked == ["Pneumonia"]


def test_unparseable_answer_fails_and_keeps_the_raw_output_in_the_error(clinical_spec):
    answer = parse_answer(" Influenza or maybe sepsis", clinical_spec)
    assert answer.status == "failed"
    assert not answer.ok
    assert answer.ranked == [] and answer.top is None
    assert "Influenza or maybe sepsis" in answer.error


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_empty_completion_fails(clinical_spec, text):
    answer = parse_answer(text, clinical_spec)
    assert answer.status == "failed" and answer.error


@pytest.mark.parametrize("value", [None, 42, b" Pneumonia", ["Pneumonia"]])
def test_non_text_completion_fails_without_raising(clinical_spec, value):
    answer = parse_answer(value, clinical_spec)
    assert answer.status == "failed"
    assert "not text" in answer.error


def test_reasoning_before_the_answer_line_is_kept_apart(clinical_spec):
    text = "Fever and crackles point to the chest.\nAnswer: Pneumonia; Appendicitis"
    answer = parse_answer(text, clinical_spec, prefilled=False)
    assert answer.ranked == ["Pneumonia", "Appendicitis"]
    assert answer.reasoning == "Fever and crackles point to the chest."


def test_the_last_answer_line_wins(clinical_spec):
    text = "First guess. Answer: Migraine. On reflection, no.\nAnswer: Lyme disease"
    assert parse_answer(text, clinical_spec, prefilled=False).ranked == ["Lyme disease"]


def test_answer_marker_is_case_insensitive(clinical_spec):
    assert parse_answer("thinking... ANSWER :  Migraine", clinical_spec, prefilled=False).ranked == ["Migraine"]


def test_reasoning_without_an_answer_line_fails_and_keeps_the_reasoning(clinical_spec):
    answer = parse_answer("The patient has a fever and I need more time.", clinical_spec, prefilled=False)
    assert answer.status == "failed"
    assert answer.reasoning == "The patient has a fever and I need more time."


def test_prefilled_completion_needs_no_answer_marker(clinical_spec):
    assert parse_answer(" Migraine", clinical_spec, prefilled=True).ranked == ["Migraine"]


def test_text_after_a_blank_line_is_not_part_of_the_answer(clinical_spec):
    answer = parse_answer(" Migraine\n\nPneumonia is much less likely.", clinical_spec)
    assert answer.ranked == ["Migraine"]
    assert answer.status == "ok"


# ---- extraction --------------------------------------------------------------------------------

def test_json_answer_is_parsed_into_a_value(invoice_spec):
    answer = parse_answer(' {"vendor": "Acme Tools Ltd", "total": 12.5}', invoice_spec)
    assert answer.status == "ok"
    assert answer.value == {"vendor": "Acme Tools Ltd", "total": 12.5}


def test_json_answer_may_follow_prose_and_precede_trailing_text(invoice_spec):
    answer = parse_answer('Here it is: {"currency": "EUR"} hope that helps', invoice_spec)
    assert answer.value == {"currency": "EUR"}


def test_json_after_reasoning_is_parsed(invoice_spec):
    answer = parse_answer('The total is on line 9.\nAnswer: {"total": 9}', invoice_spec, prefilled=False)
    assert answer.value == {"total": 9}
    assert answer.reasoning == "The total is on line 9."


@pytest.mark.parametrize("text, error", [
    (" the vendor is Acme", "no JSON"),
    (' {"vendor": "Acme",', "invalid JSON"),
])
def test_answer_without_a_valid_json_object_fails_with_a_reason(invoice_spec, text, error):
    answer = parse_answer(text, invoice_spec)
    assert answer.status == "failed" and answer.value is None
    assert error in answer.error


@pytest.mark.parametrize("text", [' ["Acme", 12.5]', ' "Acme"', " 12.5"])
def test_json_that_is_not_an_object_fails(invoice_spec, text):
    answer = parse_answer(text, invoice_spec)
    assert answer.status == "failed" and answer.value is None


@pytest.mark.parametrize("text", [
    ' {"total": ' + "9" * 5000 + "}",  # past Python's int-from-string digit limit
    ' {"a": ' + "[" * 100_000 + "}",  # past the recursion limit
])
def test_pathological_json_fails_instead_of_raising(invoice_spec, text):
    assert parse_answer(text, invoice_spec).status == "failed"


# ---- match_label -------------------------------------------------------------------------------

@pytest.mark.parametrize("piece, label", [
    ("Pneumonia", "Pneumonia"),
    ("  pneumonia. ", "Pneumonia"),
    ("type-1 diabetes", "Type 1 diabetes"),
    ("3) Kidney stones", "Kidney stones"),
    ("* Lyme disease", "Lyme disease"),
    ("most likely migraine given the aura", "Migraine"),
])
def test_match_label_finds_the_label_a_piece_names(piece, label):
    assert match_label(piece, LABELS) == label


@pytest.mark.parametrize("piece", ["", "  ", "1.", "thyroid", "Migraines", "pneumonia or migraine", "sepsis"])
def test_match_label_returns_none_when_no_single_label_is_named(piece):
    assert match_label(piece, LABELS) is None


# ---- format_answer and prompts -----------------------------------------------------------------

def test_format_answer_joins_labels_with_the_separator_after_the_prefill():
    assert format_answer(["Pneumonia", "Migraine"]) == " Pneumonia; Migraine"


def test_format_answer_without_prefill_starts_with_the_answer_marker():
    assert format_answer(["Pneumonia"], prefilled=False) == f"{PREFILL} Pneumonia"


def test_format_answer_writes_extraction_answers_as_json_keeping_unicode():
    text = format_answer({"vendor": "Café Noir", "total": 3.5})
    assert "Café Noir" in text
    assert json.loads(text) == {"vendor": "Café Noir", "total": 3.5}


@given(st.lists(st.sampled_from(LABELS), min_size=1, max_size=3, unique=True), st.booleans())
def test_a_formatted_gold_ranking_parses_back_to_itself(clinical_spec, ranking, prefilled):
    answer = parse_answer(format_answer(ranking, prefilled=prefilled), clinical_spec, prefilled=prefilled)
    assert answer.status == "ok"
    assert answer.ranked == ranking


# A value holding the marker itself ("Answer:") is read as a repeated marker: left out here.
_VALUE_TEXT = st.text().filter(lambda s: "answer" not in s.lower())


@given(st.dictionaries(st.sampled_from(["vendor", "number", "date", "total", "currency"]),
                       st.one_of(_VALUE_TEXT, st.integers(), st.floats(allow_nan=False), st.none()), min_size=1))
def test_a_formatted_gold_object_parses_back_to_itself(invoice_spec, value):
    answer = parse_answer(format_answer(value), invoice_spec)
    assert answer.status == "ok"
    assert answer.value == value


def test_document_text_collapses_whitespace_and_is_cut_to_max_doc_chars(clinical_spec):
    text = "word \n\n\t " * 1000
    shown = document_text(text, clinical_spec)
    assert len(shown) == clinical_spec.prompts.max_doc_chars
    assert "  " not in shown and "\n" not in shown


def test_a_window_cut_just_after_a_space_shows_what_a_longer_window_shows(clinical_spec):
    words = " ".join(["abcd"] * 400)
    assert words[clinical_spec.prompts.max_doc_chars - 1] == " "
    assert document_text(words[:320], clinical_spec) == document_text(words[:1500], clinical_spec) == words[:320]


def test_document_kept_whole_is_shown_through_the_spec_strategy(clinical_spec):
    title = "The Widget Manual\nJane Doe\n2024"
    body = "\n".join(["The patient reported a fever that lasted for three days and then went away."] * 8)
    whole = excerpt.PAGE_BREAK.join([title, body])  # ingest.read.chars: null keeps page breaks
    read = clinical_spec.ingest.read
    after_front = clinical_spec.model_copy(update={"ingest": clinical_spec.ingest.model_copy(
        update={"read": read.model_copy(update={"strategy": "after_front"})})})
    assert document_text(whole, clinical_spec).startswith("The Widget Manual Jane Doe 2024 The patient")
    shown = document_text(whole, after_front)
    assert shown.startswith("The patient reported") and len(shown) == clinical_spec.prompts.max_doc_chars


def test_classification_message_lists_the_labels_and_top_k(clinical_spec):
    message = user_message("A 40-year-old with fever.", clinical_spec)
    assert "A 40-year-old with fever." in message
    assert "; ".join(LABELS) in message
    assert "3 most likely" in message


def test_extraction_message_lists_the_fields_with_their_types(invoice_spec):
    message = user_message("Invoice text", invoice_spec)
    assert "total (number)" in message and "date (date)" in message


def test_rendered_prompt_ends_with_the_prefill_unless_the_model_reasons(clinical_spec):
    tok = FakeTokenizer()
    assert render_prompt("doc", clinical_spec, tok).endswith(PREFILL)
    reasoning = render_prompt("doc", clinical_spec, tok, reasoning=True)
    assert not reasoning.endswith(PREFILL)
    assert reasoning.startswith(f"<system>{clinical_spec.prompts.system}")


def test_prompt_hash_depends_on_reasoning_and_prompts(clinical_spec, invoice_spec):
    assert prompt_hash(clinical_spec, False) == prompt_hash(clinical_spec, False)
    assert prompt_hash(clinical_spec, False) != prompt_hash(clinical_spec, True)
    assert prompt_hash(clinical_spec, False) != prompt_hash(invoice_spec, False)


# ---- never raises ------------------------------------------------------------------------------

@given(st.text(), st.booleans())
def test_any_text_parses_to_an_answer_without_raising(clinical_spec, text, prefilled):
    answer = parse_answer(text, clinical_spec, prefilled=prefilled)
    assert isinstance(answer, Answer)
    assert answer.status in ("ok", "partial", "failed")
    assert len(answer.ranked) <= clinical_spec.output.top_k
    assert len(set(answer.ranked)) == len(answer.ranked)
    assert set(answer.ranked) <= set(LABELS)
    assert (answer.status == "failed") == (not answer.ranked)


@given(st.lists(st.one_of(st.sampled_from(LABELS), st.text(max_size=20)), max_size=6),
       st.sampled_from(["; ", ", ", "\n", " > ", " | "]))
def test_label_soup_never_raises_and_only_yields_known_labels(clinical_spec, pieces, sep):
    answer = parse_answer(" " + sep.join(pieces), clinical_spec)
    assert set(answer.ranked) <= set(LABELS)


@given(st.text(), st.booleans())
def test_any_text_parses_as_extraction_without_raising(invoice_spec, text, prefilled):
    answer = parse_answer(text, invoice_spec, prefilled=prefilled)
    assert answer.status in ("ok", "failed")
    assert (answer.value is not None) == (answer.status == "ok")
    assert answer.value is None or isinstance(answer.value, dict)


# ---- labels with descriptions ------------------------------------------------------------------

def _with_descriptions(spec, instruction=None):
    out = spec.output.model_copy(update={"label_descriptions": {"Migraine": "recurring headaches",
                                                                "Pneumonia": "lung infection"}})
    prompts = spec.prompts.model_copy(update={"instruction": instruction or spec.prompts.instruction})
    return spec.model_copy(update={"output": out, "prompts": prompts})


def test_the_demo_prompt_renders_as_before_descriptions_existed(clinical_spec):
    labels = "; ".join(clinical_spec.output.labels)
    expected = clinical_spec.prompts.instruction.replace("{labels}", labels).replace("{top_k}", "3")
    assert user_message("Fever and cough.", clinical_spec) == expected.replace("{document}", "Fever and cough.")


def test_label_descriptions_placeholder_lists_each_label_on_a_line(clinical_spec):
    spec = _with_descriptions(clinical_spec, "Labels:\n{label_descriptions}\nText: {document}")
    message = user_message("x", spec)
    assert "- Migraine: recurring headaches\n" in message
    assert "- Pneumonia: lung infection\n" in message
    assert "- Appendicitis\n" in message  # a label without a description is still listed
    assert message.count("\n- ") == len(spec.output.labels)


def test_without_the_placeholder_the_candidates_carry_the_descriptions(clinical_spec):
    message = user_message("x", _with_descriptions(clinical_spec))
    assert "Migraine (recurring headaches); Lyme disease; Kidney stones" in message

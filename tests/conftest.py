"""Shared fixtures: an isolated DISTILLERY_HOME per test, the demo specs, small PDFs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
# Flows run outside the test harness start Prefect's ephemeral server, which can take longer than the
# default 20 s on a loaded 2-core machine (as `make` sets it too).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
if str(REPO) not in sys.path:  # `pytest` as well as `python -m pytest` from the repository root
    sys.path.insert(0, str(REPO))

from distillery import synth  # noqa: E402
from distillery.spec import TaskSpec, load_spec, parse_spec  # noqa: E402

CLINICAL_YAML = REPO / "data" / "demo" / "clinical.yaml"

# Property tests stay fast: ~100 examples, no per-example deadline (the first call warms caches).
# The autouse DISTILLERY_HOME fixture is function-scoped but never changes between examples.
settings.register_profile("distillery", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("distillery")

INVOICE_FIELDS = {
    "vendor": {"type": "string"},
    "number": {"type": "string"},
    "date": {"type": "date"},
    "total": {"type": "number", "tolerance": 0.01},
    "currency": {"type": "string"},
}


@pytest.fixture(autouse=True)
def distillery_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def clinical_raw() -> dict:
    return yaml.safe_load(CLINICAL_YAML.read_text())


@pytest.fixture
def clinical_spec() -> TaskSpec:
    """The shipped clinical demo spec, its relative paths resolving against its folder, data/demo."""
    return load_spec(CLINICAL_YAML)


@pytest.fixture
def invoice_raw(clinical_raw) -> dict:
    raw = dict(clinical_raw)
    raw.pop("profiles")
    raw.update(
        name="invoices",
        source="invoices",
        output={"kind": "extraction", "fields": INVOICE_FIELDS},
        grader={"type": "fields"},
        seeds={"path": "invoice_seeds.jsonl"},
    )
    raw["prompts"] = dict(raw["prompts"], instruction="Invoice:\n{document}\n\nExtract {fields} as JSON after \"Answer:\".")
    return raw


@pytest.fixture
def invoice_spec(invoice_raw) -> TaskSpec:
    """An extraction spec over the invoice demo (independent of whether invoices.yaml exists)."""
    return parse_spec(invoice_raw, root=CLINICAL_YAML.parent)


_TINY_ENCODER: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """A data root for what module- and session-scoped fixtures write (each test then gets its own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLERY_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(scope="session", autouse=True)
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A random 2-layer sentence encoder with the embedded model's tokenizer (built once a session)."""
    from distillery.encoder import tiny_encoder

    if not _TINY_ENCODER:
        _TINY_ENCODER.append(tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny"))
    return _TINY_ENCODER[0]


def quick_stages(spec: TaskSpec, student_base, *, layers: int, **label) -> TaskSpec:
    """`spec` made to run its stages in seconds on tiny models: one ingest worker, label batches of 8
    (plus `label` settings), a student of `layers` layers from `student_base` trained for 2 steps."""
    return spec.model_copy(update={
        "label": spec.label.model_copy(update={"batch_size": 8, **label}),
        "ingest": spec.ingest.model_copy(update={"workers": 1}),
        "models": spec.models.model_copy(update={"student": str(student_base), "encoder": str(_TINY_ENCODER[0])}),
        "student": spec.student.model_copy(update={
            "kind": "lm", "layers": layers, "sft": spec.student.sft.model_copy(update={"max_steps": 2, "batch_size": 4})}),
    })


@pytest.fixture(scope="session")
def good_bytes() -> bytes:
    """A valid two-page case report."""
    return synth.case_pdf(synth.make_case(0), 0)

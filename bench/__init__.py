"""Benchmarks, one module each: `python -m bench.NAME`, each writing `data/bench/NAME.json`.

robustness, adversarial, label, student, rft, grpo_step, bulk; `common` holds what they share
(the output folder, machine info, fresh documents, the stage outputs they read). Targets and
acceptance thresholds live here, never in the library.
"""

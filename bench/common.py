"""What the benchmarks share: where they write, machine info, fresh documents, stage outputs, the CLI."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from distillery import lake, pdf, synth
from distillery.errors import StageInputMissing

DEFAULT_SPEC = "data/demo/clinical.yaml"


def bench_dir() -> Path:
    """The one folder benchmarks write to (results and the bulk corpus) and `plan` reads: the
    layout's `bench` (data/bench unless DISTILLERY_HOME points elsewhere)."""
    return lake.Layout.at().bench


def warm_page_cache(paths: list[str]) -> int:
    """Read every file once, so the first arm does not pay for the disk and the later ones not."""
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def machine(torch_threads: bool = False) -> dict:
    """The machine a result was measured on, merged into its JSON."""
    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    if torch_threads:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


def stage_outputs(spec, stage: str, layout: lake.Layout | None = None, hint: str | None = None) -> dict[str, str]:
    """The outputs of the latest finished `stage` of the task under `layout` (default: the data root);
    missing, an error naming the command that makes it (`hint`, default `make STAGE`)."""
    layout = layout or lake.Layout.at()
    outputs = lake.latest_outputs(layout, spec.name, stage)  # None without a catalog too (lake.query)
    if outputs is None:
        raise StageInputMissing(f"bench ({stage})", f"a finished {stage} stage for task {spec.name!r} in {layout.root}",
                                hint or f"make {stage}")
    return outputs


def fresh_items(n: int, start: int = 100_000) -> list[dict]:
    """n new demo case reports (text via the same PDF extraction) with their true label."""
    cases = [synth.make_case(i) for i in range(start, start + n)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, case in zip(range(start, start + n), cases):
            path = Path(tmp) / case.name
            path.write_bytes(synth.case_pdf(case, i))
            paths.append(str(path))
        texts = [r.text for r in pdf.extract_many(paths, workers=2)]
    return [{"sha256": f"fresh-{c.name}", "document": c.name, "text": t, "answer": c.label}
            for c, t in zip(cases, texts)]


def parser(doc: str | None, *, spec: bool = True, profile: bool = True) -> argparse.ArgumentParser:
    """A benchmark's argument parser with the options they share."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if spec:
        ap.add_argument("--spec", default=DEFAULT_SPEC, help="the task spec")
    if profile:
        ap.add_argument("--profile", default="demo")
    ap.add_argument("--out", default=str(bench_dir()), help="the folder the JSON result goes to")
    return ap


def result_path(name: str, out: str | Path, profile: str = "demo") -> Path:
    """`out/NAME.json` (`NAME-PROFILE.json` for another profile, so profiles keep theirs apart)."""
    return Path(out) / (f"{name}.json" if profile == "demo" else f"{name}-{profile}.json")


def write(name: str, result: dict, out: str | Path, profile: str = "demo") -> Path:
    """Write `result_path`; prints the scalars."""
    path = lake.write_json(result, result_path(name, out, profile))
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if not isinstance(v, (dict, list))}
    print(f"{name} -> {path}: {shown}")
    return path

"""A self-contained HTML report of one distill run: `<home>/reports/<run>/index.html`.

One file, no external CSS or JS, plots inlined as base64 PNG data URIs, every text escaped. It reads
only what the stages wrote: each stage's `StageResult` (outputs, counts, metrics, seconds, key) and
the Parquet files it points to (teacher_eval, teacher_metrics, machine_labels, label_eval when the
label stage wrote one, student_eval, seed_labels, bulk labels). Sections, each an element with a
stable id: `summary`, `accuracy`, `reward-curve`, `confusion`, `calibration`, `throughput`,
`lineage`. A stage that did not run (or whose files are gone) makes its sections say "not run".

    write_report(spec, {"teacher": result, ...}, out_dir)     # from the flow's stage results
    python -m distillery.report data/demo/clinical.yaml --profile demo [--out DIR]   # from the catalog

Modules: `lineage` reads the run (stage results, their tables, the catalog); `kit` is the HTML kit;
one module per section (`summary`, `accuracy`, `reward`, `confusion`, `calibration`, `throughput`,
`artifacts` for the lineage section); `page` puts them together and writes the file.
"""

from distillery.report.accuracy import section_accuracy, wilson
from distillery.report.artifacts import section_lineage
from distillery.report.calibration import COLORS, section_calibration
from distillery.report.confusion import section_confusion
from distillery.report.kit import CSS, Raw, code, esc, fmt, not_run, note, png, table
from distillery.report.lineage import as_result, catalog_run, report_dir, run_name
from distillery.report.page import SECTIONS, TITLES, build_html, main, write_report
from distillery.report.reward import _component_columns as _component_columns  # tests reach it here
from distillery.report.reward import section_reward_curve
from distillery.report.summary import section_summary
from distillery.report.throughput import section_throughput

__all__ = ["COLORS", "CSS", "SECTIONS", "TITLES", "Raw", "as_result", "build_html", "catalog_run", "code", "esc",
           "fmt", "main", "not_run", "note", "png", "report_dir", "run_name", "section_accuracy",
           "section_calibration", "section_confusion", "section_lineage", "section_reward_curve",
           "section_summary", "section_throughput", "table", "wilson", "write_report"]

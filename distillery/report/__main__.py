"""`python -m distillery.report SPEC [--profile P] [--out DIR] [--home ROOT]`: the report of a task's latest run."""

import sys

from distillery.report.page import main

sys.exit(main())

"""The TRL versions our uses of TRL's private internals were written against.

`grpo.SharedPromptGRPOTrainer` overrides two private GRPOTrainer methods and `sft.answer_positions_only`
patches the private `trl.trainer.utils._use_triton`. Private names change between releases without
notice, so each checks `trl_tested` first and, on a TRL release not listed here, keeps TRL's own path
(slower, same results) and warns once instead of failing or, worse, mis-training. After checking the
overrides against a new TRL (tests/test_grpo.py, tests/test_student.py), add its major.minor here;
constraints.txt pins the one installed.
"""

from __future__ import annotations

import importlib.metadata
import warnings

from packaging.version import Version

TESTED_TRL = ("1.16",)


def trl_version() -> str:
    """The installed TRL's version string."""
    return importlib.metadata.version("trl")


def major_minor(version: str) -> str:
    """'1.16' of '1.16.0', '1.16.2.dev0' or '1.16rc1'."""
    release = Version(version).release
    return ".".join(str(part) for part in (release + (0,))[:2])


def trl_tested(feature: str) -> bool:
    """Whether the installed TRL is one `feature` was written against; if not, warn that TRL's own path runs."""
    installed = trl_version()
    if major_minor(installed) in TESTED_TRL:
        return True
    warnings.warn(f"{feature} was written against TRL {', '.join(TESTED_TRL)} and TRL {installed} is installed: "
                  "using TRL's own path instead (same results, slower). Install the version pinned in "
                  "constraints.txt to get it back.", stacklevel=3)
    return False

"""`python -m bench.grpo_step`: one GRPO batch at the spec's sizes, forward+backward by TRL's path vs
the shared-prompt one (and generation by each) -> data/bench/grpo_step.json.
"""

from __future__ import annotations

import os

from bench import common


def grpo_step(spec_path: str, profile: str = "demo") -> dict:
    """One GRPO batch at the spec's sizes: TRL's forward+backward vs the shared-prompt one."""
    import torch

    from distillery.grpo import bench_grpo_step
    from distillery.spec import load_spec

    spec = load_spec(spec_path, profile=profile)
    cfg = spec.teacher.grpo
    torch.set_num_threads(os.cpu_count() or 1)
    result = bench_grpo_step(str(spec.path(spec.models.base)), prompts_per_step=cfg.prompts_per_step,
                             num_generations=cfg.num_generations, completion_length=cfg.max_completion_length)
    return {**result, **common.machine(torch_threads=True)}


def main(argv: list[str] | None = None) -> None:
    args = common.parser(__doc__).parse_args(argv)
    common.write("grpo_step", grpo_step(args.spec, args.profile), args.out, args.profile)


if __name__ == "__main__":
    main()

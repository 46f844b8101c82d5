"""Accuracy against GFLOPs on the embedded task: every method at each vision budget, plus the `random` floor.

    python benchmarks/quality_blip.py --preset tiny            # CPU
    python benchmarks/quality_blip.py --preset small           # GPU

Uses (or trains once and caches) the preset's base model, gives the methods that learn (MADTP, SmartTrim) a short
fine-tune (`--finetune-steps`; 0 scores them untrained), scores the validation split and writes `quality.json`,
`quality.md` and `quality.png` to `--out`. The report says
whether the unpruned model beats `random` at keep 0.25 by >= 5 points (else the task cannot judge methods).
"""

import argparse
from pathlib import Path

from hf_vltprune.demo import run_demo
from hf_vltprune.embedded import PRESETS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    parser.add_argument("--max-examples", type=int, default=None, help="validation examples (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=100, help="of MADTP and SmartTrim (0: untrained)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    run_demo(args.out, preset=args.preset, budgets=args.budgets, seed=args.seed, max_examples=args.max_examples,
             finetune_steps=args.finetune_steps)


if __name__ == "__main__":
    main()

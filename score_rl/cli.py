"""``score-rl {train, eval}``. Bad input exits non-zero with one line naming the problem."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="score-rl", description="SCoRe: train language models to self-correct with RL")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (SCoRe Stage I then Stage II)")
    train.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. shaping.alpha=5 rollout.num_workers=2")
    ev = sub.add_parser("eval", help="two-turn evaluation of one or more model directories, side by side")
    ev.add_argument("config", help="YAML config naming the env and prompts, e.g. configs/quickstart.yaml")
    ev.add_argument("overrides", nargs="*", help="dotlist overrides")
    ev.add_argument("--model", action="append", default=[], metavar="DIR",
                    help="model directory to evaluate (repeatable); default: eval.model_paths")
    ev.add_argument("--output", metavar="DIR", help="write per-problem JSONL and summaries here")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    from score_rl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "train":
            return _train(cfg)
        return _eval(cfg, args)
    except ConfigError as err:
        print(f"score-rl: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("score-rl: interrupted", file=sys.stderr)
        return 130


def _train(cfg) -> int:
    from score_rl.trainer import Trainer

    trainer = Trainer(cfg)
    print(f"run directory: {trainer.run_dir}")
    trainer.fit()
    return 0


def _eval(cfg, args) -> int:
    from score_rl.base_model import resolve_model_path
    from score_rl.config import ConfigError
    from score_rl.evaluation import evaluate_models
    from score_rl.metrics import HEADLINE, format_table

    paths = args.model or list(cfg.eval.model_paths)
    if not paths:
        cfg.model.path = cfg.model.path  # evaluate the configured model (or the cached tiny base)
        paths = [resolve_model_path(cfg)]
    for path in paths:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"--model '{path}' is not a Hugging Face model directory (no config.json)")
    if args.output:
        cfg.eval.output_dir = args.output
    results = evaluate_models(cfg, paths)
    print(format_table(results, HEADLINE + ("fix_rate", "break_rate", "unchanged")))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

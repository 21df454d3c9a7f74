"""The `repb-ray` command: train | sweep. Bad input gives one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from repb_ray.config import Config, ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config (see jobs/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set rho=0.3 --set epochs=5")
    p.add_argument("--output-dir", help="where summaries, checkpoints and the MLflow store go")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under the output dir; 'none')")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="repb-ray", description="Dynamic data pruning (RePB) on Ray.")
    sub = ap.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("train", help="train one model with a pruning policy"))
    sw = sub.add_parser("sweep", help="Ray Tune sweep over config fields, tracked in MLflow")
    _common(sw)
    return ap


def _overrides(args) -> list[str]:
    extra = list(args.overrides)
    if args.output_dir:
        extra.append(f"output_dir={args.output_dir}")
    if args.tracking_uri:
        extra.append(f"tracking_uri={args.tracking_uri}")
    return extra


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg = Config.from_yaml(args.config, _overrides(args))
            from repb_ray.train.driver import run_training
            run_training(cfg)
        else:
            from repb_ray.tune.sweep import SweepSpec, run_sweep
            spec = SweepSpec.from_yaml(args.config, _overrides(args))
            run_sweep(spec)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"repb-ray: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

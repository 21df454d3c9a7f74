"""The `repb-ray` command: train | sweep | prepare | calibrate. Bad input gives one line on stderr and exit code 2;
every line it prints is redacted. Runs in the driver."""

from __future__ import annotations

import argparse
import os
import sys

from repb_ray.config import Config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a YAML config file, or the name of a shipped one (smoke, fashion_mnist_repb, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; repeatable, e.g. --set policy_args.rho=0.3 --set task_args.train_subset=1000")
    p.add_argument("--output-dir", help="where summaries, run records and the MLflow store go (a folder)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite under the output dir; 'none')")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs and the workers' output")
    p.add_argument("--overwrite", action="store_true", help="start over: remove what the earlier invocations of "
                   "this run (sweep) wrote, then run afresh")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="repb-ray", description="Dynamic data pruning (RePB) on Ray.")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one model with a pruning policy")
    _common(tr)
    tr.add_argument("--resume", action="store_true", help="continue the run of this name even if its config changed")
    _common(sub.add_parser("sweep", help="Ray Tune sweep over config fields, tracked in MLflow (the same command "
                                         "continues an interrupted sweep)"))
    pr = sub.add_parser("prepare", help="write a dataset as Parquet shards with a dense int64 id column")
    pr.add_argument("source", help="a built-in task (fashion_mnist, cifar10, cifar100, synthetic) or a path of "
                    "Parquet files / an image folder (with --images)")
    pr.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    pr.add_argument("--split", default="train", choices=["train", "test"], help="built-in tasks: which split")
    pr.add_argument("--images", action="store_true", help="source is a folder of images (ray.data.read_images)")
    pr.add_argument("--rows-per-file", type=int, default=2048, help="rows per file: the unit the epoch order "
                    "permutes (smaller: finer order, more files)")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="task_args of a built-in task, e.g. --set data_dir=/data/fmnist")
    pr.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    ca = sub.add_parser("calibrate", help="the fixed rho (RePB) or r (InfoBatch) expected to reach a pruning budget")
    ca.add_argument("--policy", default="repb", choices=["repb", "infobatch"])
    ca.add_argument("--target-pruned", type=float, required=True, help="the fraction of sample-steps to save, in [0, 1)")
    ca.add_argument("--epochs", type=int, required=True, help="the run's epochs (epoch 1 is full data)")
    ca.add_argument("--below-fraction", type=float, default=0.5, help="the share of an epoch below its mean loss "
                    "(default 0.5; a budgeted run's summary records it per epoch)")
    ca.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    return ap


def _values(args) -> dict:
    """--output-dir and --tracking-uri as given: strings, never parsed as YAML."""
    out = {}
    if args.output_dir is not None:
        out["output_dir"] = args.output_dir
    if args.tracking_uri is not None:
        out["tracking_uri"] = args.tracking_uri
    return out


def _prepare(args) -> None:
    from repb_ray.config import parse_overrides
    from repb_ray.data.prepare import check_output_folder, prepare_arrays, prepare_dataset
    from repb_ray.tasks import BUILTIN

    check_output_folder(args.out, args.rows_per_file)  # before any data is read

    def progress(rows, seconds):
        print(f"[repb_ray] prepared {rows} rows ({rows / max(seconds, 1e-9):.0f} rows/s)", flush=True)
    if args.source in BUILTIN:
        from repb_ray.tasks.loader import instantiate
        task = instantiate(args.source, parse_overrides(args.overrides))
        x, y = task.arrays(args.split)
        m = prepare_arrays({"x": x, "y": y}, args.out, rows_per_file=args.rows_per_file,
                           source=f"{args.source} {args.split}")
    else:
        import ray.data

        from repb_ray.train.ray_env import ensure_ray
        if not os.path.exists(args.source) and "://" not in args.source:
            raise FileNotFoundError(f"{args.source!r} does not exist; give a folder or file of Parquet data (or images "
                                    "with --images)")
        ensure_ray(Config(num_workers=1), None, args.verbose)
        ds = ray.data.read_images(args.source, include_paths=True) if args.images else ray.data.read_parquet(args.source)
        m = prepare_dataset(ds, args.out, rows_per_file=args.rows_per_file, source=args.source, progress=progress)
    print(f"[repb_ray] wrote {m['num_samples']} rows in {len(m['files'])} files to {args.out}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from repb_ray._ray_compat import keep_local_ray_on_loopback
    keep_local_ray_on_loopback()  # before anything imports Ray
    args = build_parser().parse_args(argv)
    from repb_ray.redact import redact_text
    sys.argv = [redact_text(a) for a in sys.argv]  # Ray records the driver's command line
    from repb_ray.logs import mask_secrets, quiet
    mask_secrets()
    if not args.verbose:
        quiet()  # before anything imports Ray Data or MLflow
    from repb_ray.errors import describe
    log_dir = None
    try:
        if args.command == "train":
            cfg = Config.from_yaml(args.config, args.overrides, _values(args))
            from repb_ray.train.run_home import default_name
            if cfg.name is None:
                cfg = cfg.replace(name=default_name(args.config, cfg))
            log_dir = cfg.run_dir
            from repb_ray.train.driver import run_training
            run_training(cfg, resume=args.resume, overwrite=args.overwrite, verbose=args.verbose)
        elif args.command == "sweep":
            from repb_ray.tune.spec import SweepSpec
            spec = SweepSpec.from_yaml(args.config, args.overrides, _values(args))
            from repb_ray.tune.sweep import run_sweep
            run_sweep(spec, verbose=args.verbose, overwrite=args.overwrite)
        elif args.command == "calibrate":
            from repb_ray.core.calibrate import calibrate
            from repb_ray.errors import ConfigError
            try:
                c = calibrate(args.policy, args.target_pruned, args.epochs, args.below_fraction)
            except (TypeError, ValueError) as exc:  # bad input: one line, exit code 2
                raise ConfigError(str(exc)) from None
            print(f"policy_args.{c['knob']}: {c['value']:.4f}   (expected {c['expected_pruned']:.1%} of sample-steps "
                  f"pruned over {args.epochs} epochs" + ("" if c["reachable"] else
                                                        f"; {args.target_pruned:.0%} is out of reach") + ")")
        else:
            _prepare(args)
    except KeyboardInterrupt:
        print("repb-ray: interrupted" + (" (run the same command to continue the sweep)"
                                         if args.command == "sweep" else ""), file=sys.stderr)
        return 130
    except Exception as exc:  # one line; the full traceback goes to the run's error.log (and, verbose, here)
        line, code = describe(exc, log_dir)
        if args.verbose:
            import traceback
            print(redact_text(traceback.format_exc()), file=sys.stderr)
        print(f"repb-ray: error: {line}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m jobs.sweep --config jobs/configs/X.yaml [--set k=v] -- same as `repb-ray sweep`."""

import sys

from repb_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))

"""python -m jobs.train --config jobs/configs/X.yaml [--set k=v] -- same as `repb-ray train`."""

import sys

from repb_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""``python -m npcadapt.demo``: the same as ``npcadapt demo``."""

import argparse
import sys

from ..errors import NpcAdaptError
from . import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m npcadapt.demo", description="The npcadapt pygame demo.")
add_arguments(parser)
try:
    sys.exit(main(parser.parse_args()))
except NpcAdaptError as exc:
    print(f"npcadapt demo: error: {exc}", file=sys.stderr)
    sys.exit(2)

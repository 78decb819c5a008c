"""Helpers shared by the example scripts (not part of the tfvae library)."""

import argparse
import itertools
import os


def example_parser(doc):
    """An argument parser with the flags every example takes: --quick and --output."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="tiny settings (for tests)")
    parser.add_argument("--output", default="example_outputs", help="folder for the results")
    return parser


def fresh_output_dir(root, name):
    """Creates and returns a new folder `root/name-N`, so earlier results are never overwritten."""
    os.makedirs(root, exist_ok=True)
    for i in itertools.count(1):
        path = os.path.join(root, f"{name}-{i}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue

"""`sparsesearch models` and `sparsesearch space`: what the zoo and a search space contain."""

from __future__ import annotations

import argparse

from ..models import list_models, model_defaults
from ..models.family import get_family
from ..space import SearchSpace
from ._base import Command, CommandError


class ModelsCommand(Command):
    name = "models"
    help = "list the registered models"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "pattern", nargs="?", default="*", help="shell-style filter of the names this command lists (default: all)"
        )

    def run(self, args: argparse.Namespace) -> int:
        for name in list_models(args.pattern):
            print(f"{name:<34} {get_family(name).describe(model_defaults(name))}")
        return 0


class SpaceCommand(Command):
    name = "space"
    help = "validate a search space file and describe it (optionally sample configs)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("space", help="search space YAML (the files in search_spaces/ are examples)")
        parser.add_argument("--sample", type=int, default=0, metavar="N", help="print N random configs")
        parser.add_argument("--seed", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        import json  # noqa: PLC0415

        import numpy as np  # noqa: PLC0415

        if args.sample < 0:
            raise CommandError(f"--sample {args.sample}: give a number of configs >= 0")
        space = SearchSpace.load(args.space)
        print(space.describe())
        rng = np.random.default_rng(args.seed)
        for _ in range(args.sample):
            print(json.dumps(space.sample(rng).to_dict()))
        return 0


COMMANDS = [ModelsCommand, SpaceCommand]

"""`mmpo online [CONFIG] [--key value ...]`: on-policy rounds of sample -> grade -> pair -> train (see
:mod:`mmpo.training.online`)."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"online": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    from mmpo.config import help_listing
    from mmpo.training.tasks import task

    p.usage = "mmpo online [CONFIG.yaml] [--rounds R] [--key value ...]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = help_listing(task(name).config_class)
    p.epilog = ("CONFIG.yaml is a recipe file or a packaged recipe name (embedded/online). Any config key can be "
                "given as --key value, e.g. --rounds 3 --samples_per_prompt 8 --loss dpo. Rerunning the same "
                "command continues an interrupted run.")


def run(args: argparse.Namespace) -> int:
    from mmpo.cli.train import split_recipe
    from mmpo.config import load_config
    from mmpo.training.tasks import check_recipe_kind
    from mmpo.training.tasks import task

    recipe, _ = split_recipe(args.extra)
    if recipe is not None:  # a policy recipe plus the round keys on the command line is an online run
        check_recipe_kind(recipe, "mmpo online", ("online", "dpo"))

    entry = task("online")
    entry.train(load_config(entry.config_class, *split_recipe(args.extra)))
    return 0

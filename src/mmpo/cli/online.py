"""`mmpo online [CONFIG] [--key value ...]`: on-policy rounds of sample -> grade -> pair -> train (see
:mod:`mmpo.training.online`)."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"online": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.usage = "mmpo online [CONFIG.yaml] [--rounds R] [--key value ...]"
    p.epilog = ("CONFIG.yaml is a recipe (e.g. recipes/embedded/online.yaml). Any `mmpo dpo` key and the round keys "
                "(rounds, prompts, eval_prompts, samples_per_prompt, pairing, grader, steps_per_round, round_reference, ...) "
                "can be given as --key value. Rerunning the same command continues an interrupted run.")


def run(args: argparse.Namespace) -> int:
    from mmpo.cli.train import split_recipe
    from mmpo.config import load_config
    from mmpo.training.online import OnlineConfig, train_online

    train_online(load_config(OnlineConfig, *split_recipe(args.extra)))
    return 0

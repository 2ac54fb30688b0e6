"""`mmpo rm [CONFIG] [--key value ...]` and `mmpo dpo [CONFIG] [--key value ...]`."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"rm": True, "dpo": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    # The recipe path is taken from the leftover tokens (see split_recipe): an argparse positional would
    # swallow the value of an override such as `--model DIR` given before it.
    from mmpo.config import help_listing
    from mmpo.training.tasks import task

    p.usage = f"mmpo {name} [CONFIG.yaml] [--key value ...]"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = help_listing(task(name).config_class)
    p.epilog = EPILOGS[name]


EPILOGS = {
    "rm": "CONFIG.yaml is a recipe file or a packaged reward-model recipe name (embedded/rm, "
          "paper/rm-gemma-2b-ultrafeedback, ...). Any config key can be given as --key value, e.g. "
          "--loss bt --gamma 2.2 --max_steps 100 --lora_r 8",
    "dpo": "CONFIG.yaml is a recipe file or a packaged policy recipe name (embedded/dpo, "
           "paper/dpo-gemma-2b-ultrafeedback, ...). Any config key can be given as --key value, e.g. "
           "--loss dpo --beta 0.05 --max_steps 100 --lora_r 8",
}


def split_recipe(tokens: list[str]) -> tuple[str | None, list[str]]:
    """``["recipe.yaml", "--gamma", "1"]`` -> ``("recipe.yaml", ["--gamma", "1"])``; the recipe is optional."""
    if tokens and not tokens[0].startswith("--"):
        return tokens[0], tokens[1:]
    return None, list(tokens)


def run(args: argparse.Namespace) -> int:
    from mmpo.config import load_config
    from mmpo.training.tasks import check_recipe_kind
    from mmpo.training.tasks import task

    recipe, _ = split_recipe(args.extra)
    if recipe is not None:
        check_recipe_kind(recipe, f"mmpo {args._name}", (args._name,))
    entry = task(args._name)
    entry.train(load_config(entry.config_class, *split_recipe(args.extra)))
    return 0

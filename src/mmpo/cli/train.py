"""`mmpo rm [CONFIG] [--key value ...]` and `mmpo dpo [CONFIG] [--key value ...]`."""

from __future__ import annotations

import argparse

ACCEPTS_OVERRIDES = {"rm": True, "dpo": True}


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML recipe (see recipes/); every key can be overridden with --key value")
    p.epilog = "Any config key can be given as --key value, e.g. --gamma 2.2 --max_steps 100 --lora_r 8"


def run(args: argparse.Namespace) -> int:
    from mmpo.config import DPOConfig, RMConfig, load_config

    if args._name == "rm":
        from mmpo.training.rm import train_reward_model

        config = load_config(RMConfig, args.config, args.extra)
        train_reward_model(config)
    else:
        from mmpo.training.dpo import train_policy

        config = load_config(DPOConfig, args.config, args.extra)
        train_policy(config)
    return 0

"""A reward model directory as a grader: any ``AutoModelForSequenceClassification`` with one output (mmpo's
own reward models included).

Responses are tokenized exactly as training and ``mmpo eval pairs`` tokenize them
(:func:`mmpo.evaluation.scoring.tokenize_for_scoring_pair`: chat template; with the model's ``over_length:
drop`` a pair that fits ``max_length`` stays whole, else the prompt is cut from the left to ``max_prompt_length``
and the response to fit ``max_length``), the reward is read by :func:`mmpo.models.reward.sequence_rewards`, and
batches are formed from length-sorted work, longest first. ``score_pairs`` goes through
:func:`mmpo.evaluation.scoring.score_with_models`, the function ``mmpo eval pairs`` uses, with the same batch
order, so on a fresh run its rewards equal ``mmpo eval pairs --scores`` exactly. Scores are logits of a
Bradley-Terry model, so ``compare`` is ``sigmoid(r_a - r_b)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmpo.data.records import PreferencePair
from mmpo.data.tokenize import TokenizedPair
from mmpo.errors import UserError
from mmpo.evaluation.scoring import tokenize_for_scoring_pair
from mmpo.graders.base import Grader, PairItem, ScoreItem


def _as_pair(prompt: list[dict[str, str]], a: str, b: str) -> PreferencePair:
    return PreferencePair(prompt, [{"role": "assistant", "content": a}], [{"role": "assistant", "content": b}])


class RewardModelGrader(Grader):
    """Scores with a saved reward model; ``max_length`` / ``max_prompt_length`` default to the model's
    ``config.yaml`` (written by ``mmpo rm``), else 1024 and half of it, as in ``mmpo eval pairs``."""

    kind = "reward_model"

    def __init__(
        self,
        model_dir: str,
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        device: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        from mmpo.evaluation.scoring import load_scoring_model, model_kind, trained_over_length, training_config

        self.model_dir = str(model_dir)
        trained = training_config(self.model_dir)
        self.max_length = int(max_length or trained.get("max_length") or 1024)
        if max_prompt_length is None and max_length is None and trained.get("max_prompt_length"):
            max_prompt_length = int(trained["max_prompt_length"])
        self.max_prompt_length = int(max_prompt_length) if max_prompt_length is not None else self.max_length // 2
        self.over_length = trained_over_length(trained)  # tokenized as in training (a pair that fits stays whole)
        if model is None:
            if model_kind(self.model_dir) != "reward":
                raise UserError(f"{model_dir} is not a reward model (*ForSequenceClassification); a policy cannot grade here")
            model, tokenizer, _ = load_scoring_model(self.model_dir, kind="reward", device=torch.device(device) if device else None)
        self.model, self.tokenizer = model, tokenizer
        self._tokens: dict[tuple[Any, ...], TokenizedPair] = {}

    @property
    def fingerprint(self) -> str:
        path = Path(self.model_dir)
        stamp = ""
        for name in ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "config.json"):
            if (path / name).exists():
                stat = (path / name).stat()
                stamp = f"{stat.st_size}:{int(stat.st_mtime)}"
                break
        return f"reward_model:{path.resolve() if path.exists() else self.model_dir}:{stamp}:{self.max_length}:{self.max_prompt_length}:{self.over_length}"

    # --- tokenization, memoized for the sort key and the batch ------------------------------------------

    def _tokenize(self, prompt: list[dict[str, str]], a: str, b: str, consume: bool = False) -> TokenizedPair:
        """Token ids of the pair (a, b); memoized from the sort-key pass until the batch ``consume``s them."""
        key = (repr(prompt), a, b)
        tok = self._tokens.pop(key, None) if consume else self._tokens.get(key)
        if tok is None:
            tok = tokenize_for_scoring_pair(self.tokenizer, _as_pair(prompt, a, b), self.max_length, self.max_prompt_length, self.over_length)
            if tok is None:
                raise UserError(f"a response or prompt leaves no room within max_length {self.max_length} (prompt {str(prompt)[:80]})")
            if not consume:
                self._tokens[key] = tok
        return tok

    def token_count(self, prompt: list[dict[str, str]], response: str) -> int:
        """Tokens the model reads for ``response`` to ``prompt`` (after truncation)."""
        tok = self._tokenize(prompt, response, response)
        return len(tok.prompt_ids) + len(tok.chosen_ids)

    def _sort_key(self, kind: str, item: Any) -> Any:
        # Longest first (as mmpo.evaluation.scoring does): the first batch shows at once whether memory suffices.
        if isinstance(item, PairItem):
            tok = self._tokenize(item.prompt, item.response_a, item.response_b)
            return -(len(tok.prompt_ids) + max(len(tok.chosen_ids), len(tok.rejected_ids)))
        tok = self._tokenize(item.prompt, item.response, item.response)
        return -(len(tok.prompt_ids) + len(tok.chosen_ids))

    # --- scoring ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _score_uncached(self, items: list[ScoreItem]) -> list[float | None]:
        from mmpo.models.reward import sequence_rewards

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[float | None] = []
        for start in range(0, len(items), self.batch_size):
            rows = []
            for it in items[start : start + self.batch_size]:
                tok = self._tokenize(it.prompt, it.response, it.response, consume=True)
                rows.append(tok.prompt_ids + tok.chosen_ids)
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):  # right padding, as the training collator pads
                ids[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            rewards = sequence_rewards(self.model, ids.to(device), mask.to(device)).float().cpu()
            out.extend(float(x) for x in rewards)
        return out

    def _score_pairs_uncached(self, pairs: list[PairItem]) -> list[tuple[float | None, float | None]]:
        from mmpo.evaluation.scoring import score_with_models

        tokenized = [self._tokenize(p.prompt, p.response_a, p.response_b, consume=True) for p in pairs]
        scores = score_with_models(
            self.model, self.tokenizer, tokenized, "reward", batch_size=self.batch_size,
            max_length=self.max_length, max_prompt_length=self.max_prompt_length, progress=False,
        )
        return [(a, b) for a, b in scores]

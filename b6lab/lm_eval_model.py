"""b6lab checkpoints as an lm-evaluation-harness model named `b6lab` (needs the extra `.[eval]`).

Installing b6lab registers the model with lm-eval (an `lm_eval.models` entry point, and for
lm-eval 0.4.13 and earlier the start-up hook in lm_eval_hook.py), so lm-eval's own command runs it:

    lm_eval --model b6lab --model_args checkpoint=runs/x --tasks hellaswag

and from Python, `lm_eval.simple_evaluate(model="b6lab", ...)`. A checkout used through PYTHONPATH,
not installed, runs it as `python -m b6lab.lm_eval_model` with the same arguments.

model_args: checkpoint (a checkpoint or run folder), max_length (the model's max_seq_len),
max_gen_toks (256); lm_eval's own --device (cuda:0, or the CPU without a GPU) and --batch_size (16
when not a number) apply.
"""

from __future__ import annotations

import importlib.util
import sys

if importlib.util.find_spec("lm_eval") is None:
    _MISSING = "lm-evaluation-harness is not installed: pip install -e '.[eval]' (or pip install lm-eval)"
    if __name__ == "__main__":
        print(f"b6lab.lm_eval_model: error: {_MISSING}", file=sys.stderr)
        sys.exit(2)
    raise ImportError(_MISSING)

import torch  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from tqdm import tqdm  # noqa: E402

from b6lab.errors import UsageError  # noqa: E402
from b6lab.generate import load_for_sampling, sample  # noqa: E402
from b6lab.scoring import loglikelihoods  # noqa: E402


@register_model("b6lab")
class B6LabLM(TemplateLM):
    """loglikelihood (TemplateLM encodes the pairs as lm_eval does for every causal LM),
    loglikelihood_rolling, and generate_until with b6lab's KV-cache sampler."""

    def __init__(self, checkpoint: str, device: str | None = None, batch_size: int | str = 16,
                 max_length: int | None = None, max_gen_toks: int = 256, **_):
        super().__init__()
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            device = "auto"  # lm_eval passes its default, cuda:0, even on a machine without a GPU
        try:
            self.model, self._tokenizer, note = load_for_sampling(checkpoint, device)
        except UsageError as exc:  # lm_eval's command line would print a traceback: one line instead
            print(f"b6lab: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if note:
            print(f"note: {note}", file=sys.stderr)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> the default
        self.max_length = int(max_length or self.model.cfg.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self._tokenizer.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Scoring")
        results = loglikelihoods(self.model, [(context, continuation) for _, context, continuation in requests],
                                 max_length=self.max_length, batch_size=self.batch_size,
                                 on_batch=lambda done: bar.update(done - bar.n))
        bar.close()
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each whole text's log-likelihood, in windows of max_length tokens that do not overlap."""
        totals = []
        for request in tqdm(requests, disable=disable_tqdm, desc="Scoring texts"):
            (text,) = request.args
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scored = loglikelihoods(self.model, windows, max_length=self.max_length, batch_size=self.batch_size)
            totals.append(sum(ll for ll, _ in scored))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), totals[-1])
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with do_sample, sampled) continuations, cut before the first stop string."""
        outputs = []
        for request in tqdm(requests, disable=disable_tqdm, desc="Generating"):
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.get("max_gen_toks", self.max_gen_toks))
            temperature = float(options.get("temperature", 0.0)) if options.get("do_sample") else 0.0
            prompt = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.eot_token_id]
            generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(0)
            new_ids, text = [], ""
            for token in sample(self.model, prompt, max_new_tokens=max_new, temperature=temperature, top_k=None,
                                eos_id=self.eot_token_id, generator=generator):
                new_ids.append(token)
                text = self._tokenizer.decode(new_ids)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, options), text)
        return outputs


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except UsageError as exc:  # a checkpoint that is not one, say: one line, as b6lab's own commands
        print(f"b6lab.lm_eval_model: error: {exc}", file=sys.stderr)
        sys.exit(2)

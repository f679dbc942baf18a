"""The `peft` recipe's child: Tunix PEFT (LoRA) with Tunix's CLI pieces and TunixOps' data.

    python -m runs.entrypoints.peft CONFIG.yaml key=value ...

The arguments are `tunix.cli.peft_main`'s: a base config and OmegaConf overrides, parsed by
Tunix's own `HyperParameters`. The model and tokenizer come from Tunix's
`cli.utils.model.create_model` / `create_tokenizer` (LoRA applied by qwix there), the optimizer
from the config, and training is Tunix's `PeftTrainer` with checkpoints and TensorBoard metrics
where the config points. What differs from peft_main is the data: peft_main in google-tunix 0.1.7
can only build two downloadable translation datasets (tunix/cli/peft_main.py calls
`translation_dataset.create_datasets`), so this module reads the run's dataset as TunixOps exports
it (`data_file`: `tunix_sft` JSONL, `{"prompt", "completion"}` per line) or, without one, the
built-in corpus. The loss covers the completion (and the closing end-of-sequence token), not the
prompt.

Each checkpoint step also records its adapters' settings (model id, LoRA module path, rank, alpha)
in its Orbax metadata, so that a `grpo` run can start from it (runs/entrypoints/lora_fork.py).

It prints one line about the model (LoRA adapters against frozen base parameters) and one about
the data, and when training ends it prints how many distinct examples the trainer was given and
writes the same to `data_summary.json` in the run directory.

Exit status: 0 when training finished and every checkpoint is committed, 2 for a bad dataset or a
LoRA config that applied to nothing, 1 otherwise. Django-free.
"""

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runs.entrypoints.dataset import DatasetError, read_examples

CORPUS_PATH = Path(__file__).with_name("corpus.txt")


class UsageError(Exception):
    """Bad data or config: reported on stderr with exit status 2."""


@dataclass(frozen=True)
class Example:
    tokens: list[int]
    loss_from: int  # index of the first token the loss covers


def read_pairs(path: Path | None) -> tuple[list[tuple[str, str]], str]:
    """(prompt, completion) pairs and where they came from."""
    if path is None:
        paragraphs = [p.strip() for p in CORPUS_PATH.read_text(encoding="utf-8").split("\n\n")]
        return [("", p) for p in paragraphs if p], "the built-in corpus"
    try:
        examples = read_examples(path)
    except DatasetError as exc:
        raise UsageError(str(exc)) from exc
    pairs = [(e.prompt, e.completion) for e in examples]
    return pairs, f"dataset {path.name}"


def encode(pairs: Sequence[tuple[str, str]], tokenizer: Any, max_len: int) -> list[Example]:
    """Token ids of prompt + completion + EOS, cut to `max_len`; examples with no completion
    token left after the cut are dropped."""
    eos = tokenizer.eos_id()
    examples: list[Example] = []
    for prompt, completion in pairs:
        prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False)) if prompt else []
        completion_ids = list(tokenizer.encode(completion, add_special_tokens=False))
        tokens = (prompt_ids + completion_ids + ([eos] if eos is not None else []))[:max_len]
        if len(tokens) > len(prompt_ids) and len(tokens) >= 2:
            examples.append(Example(tokens=tokens, loss_from=len(prompt_ids)))
    return examples


class Batches:
    """Endless batches over shuffled epochs; batch i depends only on (seed, i), so a resumed run
    (Tunix replays the iterator and skips trained steps) sees the same data. Counts the distinct
    examples handed to the trainer."""

    def __init__(
        self, examples: Sequence[Example], batch_size: int, max_len: int, pad_id: int, seed: int
    ) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.seed = seed
        self.seen: set[int] = set()
        self.batches = 0

    def __iter__(self) -> Iterator[Any]:
        from tunix.sft import peft_trainer

        index = 0
        while True:
            tokens, mask = self.batch(index)
            self.batches += 1
            yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)
            index += 1

    def batch(self, index: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
        n = len(self.examples)
        tokens = np.full((self.batch_size, self.max_len), self.pad_id, dtype=np.int32)
        mask = np.zeros((self.batch_size, self.max_len), dtype=np.bool_)
        for row in range(self.batch_size):
            position = index * self.batch_size + row
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            picked = int(order[offset])
            self.seen.add(picked)
            example = self.examples[picked]
            tokens[row, : len(example.tokens)] = example.tokens
            mask[row, example.loss_from : len(example.tokens)] = True
        return tokens, mask


def train(hp: Any, run_dir: Path) -> int:
    from tunix.cli.utils import model as model_lib
    from tunix.sft import peft_trainer
    from tunix.sft import utils as sft_utils
    from tunix.utils import mesh as mesh_lib

    from runs.entrypoints import lora_fork, tunix_runtime

    config: Mapping[str, Any] = hp.config
    tunix_runtime.prepare_models(config)
    data_file = str(config.get("data_file") or "")
    pairs, source = read_pairs(Path(data_file) if data_file else None)

    shape, names = hp.parse_mesh_config("model_config")
    mesh = mesh_lib.create_mesh(shape, names)
    model, tokenizer_path = model_lib.create_model(
        config["model_config"], config["tokenizer_config"], mesh
    )
    tokenizer = model_lib.create_tokenizer(config["tokenizer_config"], tokenizer_path)
    adapters, base = tunix_runtime.lora_summary(model)
    lora = config["model_config"].get("lora_config")
    if lora and not adapters:
        raise UsageError(
            f"lora_config.module_path {lora.get('module_path')!r} matched no layer of "
            f"{config['model_config']['model_id']}: nothing would be trained"
        )
    print(
        f"peft: model {config['model_config']['model_id']} ({config['model_config']['model_name']})"
        f", {base:,} base parameters"
        + (f" frozen, {adapters:,} LoRA parameters trained" if adapters else ", full fine-tune"),
        flush=True,
    )

    max_len = int(config["max_target_length"])
    examples = encode(pairs, tokenizer, max_len)
    if not examples:
        raise UsageError(f"no example of {source} has a completion within {max_len} tokens")
    print(
        f"peft: {len(examples)} examples from {source} "
        f"({sum(len(e.tokens) for e in examples):,} tokens, at most {max_len} each)",
        flush=True,
    )
    pad_id = tokenizer.pad_id()
    batches = Batches(examples, int(config["batch_size"]), max_len, pad_id, int(config["seed"]))

    trainer = peft_trainer.PeftTrainer(
        model,
        hp.create_optimizer("optimizer_config"),
        peft_trainer.TrainingConfig(**hp.obtain_training_config_dict("training_config")),
    )

    def model_inputs(x: Any) -> dict[str, Any]:
        # Attention sees the prompt; the loss (input_mask) covers the completion only.
        present = x.input_tokens != pad_id
        return {
            "input_tokens": x.input_tokens,
            "input_mask": x.input_mask,
            "positions": sft_utils.build_positions_from_mask(present),
            "attention_mask": sft_utils.make_causal_attn_mask(present),
        }

    trainer.with_gen_model_input_fn(model_inputs)
    if adapters:
        # Each step says which adapters it holds, so a `grpo` run can start from it (a fork).
        lora_fork.record_in_every_step(
            trainer, lora_fork.checkpoint_metadata(config["model_config"])
        )
    try:
        with mesh:
            # train() ends with close(), which waits for every asynchronous checkpoint save.
            trainer.train(iter(batches))
    except BaseException:
        trainer.checkpoint_manager.close()
        raise
    summary = {
        "source": source,
        "examples": len(examples),
        "distinct_examples_trained": len(batches.seen),
        "batches": batches.batches,
        "steps": int(trainer.train_steps),
    }
    (run_dir / "data_summary.json").write_text(json.dumps(summary, sort_keys=True))
    print(
        f"peft: done at step {summary['steps']}: the trainer took {len(batches.seen)} distinct "
        f"examples of {len(examples)}",
        flush=True,
    )
    return 0


def main(argv: Sequence[str]) -> int:
    from tunix.cli import config as tunix_config

    from runs.entrypoints import tunix_runtime

    tunix_runtime.install()
    try:
        hp = tunix_config.HyperParameters(list(argv))
        return train(hp, Path(os.environ.get("TUNIX_RUN_DIR") or os.getcwd()))
    except UsageError as exc:
        print(f"peft: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    from absl import app

    app.run(lambda argv: sys.exit(main(argv)), argv=["runs.entrypoints.peft", *sys.argv[1:]])

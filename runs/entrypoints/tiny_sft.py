"""A real Tunix SFT run that fits a CPU: tiny random-weight Qwen3, char tokens, no downloads.

The run worker launches it as a child process:

    python -m runs.entrypoints.tiny_sft --config RUN_DIR/config.json --run-dir RUN_DIR \
        [--dataset DATA.jsonl]

It writes Orbax checkpoints to RUN_DIR/checkpoints/ and TensorBoard scalars to RUN_DIR/tb/.
On stdout every optimizer step gets exactly one pair of lines, in step order:

    step 12 loss 3.0595
    tunixops.metric {"step": 12, "loss": 3.0595, "perplexity": 21.32, "learning_rate": 0.003}

Exit status: 0 once every checkpoint is committed, 2 for a bad config or dataset, 1 otherwise.
This module must stay importable without Django and must not import JAX before `main` has set
the environment JAX reads at import time.
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from runs.entrypoints.dataset import DatasetError, read_examples
from runs.entrypoints.protocol import metric_line
from runs.entrypoints.specs import TINY_SFT_KEYS

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

PAD_ID = 0
UNK_ID = 1
VOCAB_SIZE = 64

# Same sizes as the Tunix-on-CPU notes: about 79k parameters, a 50-step run takes seconds.
_MODEL_DIMS: dict[str, int] = {
    "num_layers": 2,
    "embed_dim": 64,
    "hidden_dim": 128,
    "num_heads": 4,
    "head_dim": 16,
    "num_kv_heads": 2,
}
# Every projection in the attention and MLP blocks; the embedding stays frozen under LoRA.
_LORA_MODULE_PATH = ".*q_proj|.*k_proj|.*v_proj|.*o_proj|.*gate_proj|.*up_proj|.*down_proj"

TokenArray = npt.NDArray[np.int32]
MaskArray = npt.NDArray[np.bool_]


class UsageError(Exception):
    """A bad config or dataset: reported on stderr with exit status 2."""


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int
    learning_rate: float
    batch_size: int
    seq_len: int
    save_every_steps: int
    lora_rank: int
    seed: int


# The recipe's own bounds and defaults (runs/entrypoints/specs.py), as the server validates them.
_LIMITS: dict[str, tuple[type[int] | type[float], float, float]] = {
    k.name: (int if k.type == "int" else float, float(k.min or 0), float(k.max or 0))
    for k in TINY_SFT_KEYS
}
DEFAULTS: dict[str, Any] = {k.name: k.default for k in TINY_SFT_KEYS}


def parse_config(raw: object) -> tuple[TrainConfig, list[str]]:
    """Validate a decoded config.json; returns the config and warnings about ignored keys."""
    if not isinstance(raw, dict):
        raise UsageError("config must be a JSON object")
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _LIMITS:
            warnings.append(f"ignoring unknown config key {key!r}")
            continue
        kind, low, high = _LIMITS[key]
        # JSON has one number type: 3 is a fine float, but true is no int and 3.5 is no int.
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{key} must be a number, got {json.dumps(value)}")
            continue
        if kind is int and not isinstance(value, int):
            errors.append(f"{key} must be an integer, got {value!r}")
            continue
        if not math.isfinite(value):
            errors.append(f"{key} must be a finite number")
            continue
        if not low <= value <= high:
            errors.append(f"{key} must be between {low:g} and {high:g}, got {value!r}")
            continue
        values[key] = kind(value)
    if errors:
        raise UsageError("invalid config: " + "; ".join(errors))
    return TrainConfig(**{**DEFAULTS, **values}), warnings


def load_config(path: Path) -> tuple[TrainConfig, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"config {path} is not valid JSON: {exc}") from exc
    return parse_config(raw)


def load_documents(dataset: Path | None) -> tuple[list[str], str]:
    """Return the training texts and a short description of where they came from."""
    if dataset is None:
        text = CORPUS_PATH.read_text(encoding="utf-8")
        return [text], f"builtin corpus ({len(text):,} chars)"
    try:
        examples = read_examples(dataset)
    except DatasetError as exc:
        raise UsageError(str(exc)) from exc
    documents = [e.prompt + e.completion for e in examples if e.prompt + e.completion]
    if not documents:
        raise UsageError(f"dataset {dataset} has no record with text")
    chars = sum(len(doc) for doc in documents)
    return documents, f"dataset {dataset} ({len(documents):,} records, {chars:,} chars)"


class CharVocab:
    """Character-level vocabulary: the most frequent characters, everything else -> UNK_ID."""

    def __init__(self, documents: Sequence[str], size: int = VOCAB_SIZE) -> None:
        counts: Counter[str] = Counter()
        for doc in documents:
            counts.update(doc)
        # Ties are broken by code point so the same data always yields the same ids, which a
        # resumed run depends on.
        ranked = sorted(counts, key=lambda ch: (-counts[ch], ch))[: size - 2]
        self.size = size
        self.ids: dict[str, int] = {ch: i for i, ch in enumerate(ranked, start=2)}

    def encode(self, text: str) -> TokenArray:
        ids = self.ids
        return np.fromiter((ids.get(ch, UNK_ID) for ch in text), dtype=np.int32, count=len(text))


def iter_batches(
    documents: Sequence[TokenArray], batch_size: int, seq_len: int, seed: int
) -> Iterator[tuple[TokenArray, MaskArray]]:
    """Endless batches of random windows; batch i depends only on (seed, i).

    Tunix resumes by replaying the iterator and skipping the steps already trained, so keying
    each batch on its index makes a resumed run see the same data as an uninterrupted one.
    """
    index = 0
    while True:
        rng = np.random.default_rng([seed, index])
        tokens = np.full((batch_size, seq_len), PAD_ID, dtype=np.int32)
        mask = np.zeros((batch_size, seq_len), dtype=np.bool_)
        for row in range(batch_size):
            doc = documents[int(rng.integers(len(documents)))]
            if len(doc) > seq_len:
                start = int(rng.integers(len(doc) - seq_len + 1))
                doc = doc[start : start + seq_len]
            tokens[row, : len(doc)] = doc
            mask[row, : len(doc)] = True
        yield tokens, mask
        index += 1


def _json_number(value: float) -> float | None:
    # Strict JSON has no NaN or Infinity; a diverged run reports null instead.
    return value if math.isfinite(value) else None


class ProgressReporter:
    """Prints the per-step progress lines, each step once and in order."""

    def __init__(self, learning_rate: float, out: IO[str] | None = None) -> None:
        self.learning_rate = learning_rate
        self.out = out if out is not None else sys.stdout
        self.last_step = 0
        self.last_loss: float | None = None

    def report(self, step: int, loss: float, extra: Mapping[str, float]) -> None:
        # Tunix can hand over a step twice (it flushes its metric buffer on close); keep the
        # first one so consumers can rely on strictly increasing steps.
        if step <= self.last_step:
            return
        self.last_step = step
        self.last_loss = loss
        metric: dict[str, float | None] = {"loss": _json_number(round(loss, 6))}
        for name, value in extra.items():
            metric[name] = _json_number(round(float(value), 6))
        metric["learning_rate"] = self.learning_rate
        print(f"step {step} loss {loss:.4f}", file=self.out, flush=True)
        print(metric_line(step, metric), file=self.out, flush=True)


def _last_metric(trainer: Any, name: str) -> float | None:
    try:
        history = trainer.metrics_logger.get_metric_history(trainer.metrics_prefix, name, "train")
    except ValueError:
        return None
    return float(np.asarray(history[-1]))


def _build_model(cfg: TrainConfig) -> Any:
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3

    model_config = qwen3.ModelConfig(
        vocab_size=VOCAB_SIZE,
        rope_theta=10_000,
        norm_eps=1e-6,
        use_tied_embedding=True,
        **_MODEL_DIMS,
    )
    model = qwen3.Qwen3(model_config, rngs=nnx.Rngs(params=cfg.seed))
    if cfg.lora_rank:
        import qwix

        provider = qwix.LoraProvider(
            module_path=_LORA_MODULE_PATH, rank=cfg.lora_rank, alpha=2.0 * cfg.lora_rank
        )
        model = qwix.apply_lora_to_model(
            model, provider, rngs=nnx.Rngs(cfg.seed + 1), **model.get_model_input()
        )
    return model


def _count_params(model: Any, kind: Any) -> int:
    from flax import nnx

    return sum(int(np.size(leaf)) for leaf in _leaves(nnx.state(model, kind)))


def _leaves(tree: Any) -> list[Any]:
    import jax

    leaves: list[Any] = jax.tree_util.tree_leaves(tree)
    return leaves


def train(cfg: TrainConfig, documents: Sequence[str], data_desc: str, run_dir: Path) -> int:
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx
    from tunix.sft import hooks, metrics_logger, peft_trainer
    from tunix.sft import utils as sft_utils

    started = time.monotonic()
    vocab = CharVocab(documents)
    encoded = [vocab.encode(doc) for doc in documents]
    model = _build_model(cfg)
    # LoRAParam is a subclass of Param: count the adapters apart from the base weights.
    adapters = _count_params(model, nnx.LoRAParam) if cfg.lora_rank else 0
    sizes = f"params={_count_params(model, nnx.Param) - adapters:,}"
    if cfg.lora_rank:
        sizes += f" trainable={adapters:,}"
    print(
        f"tiny_sft: model {sizes} steps={cfg.max_steps} batch={cfg.batch_size} "
        f"seq_len={cfg.seq_len} lora_rank={cfg.lora_rank} data={data_desc}",
        flush=True,
    )

    tb_dir = str(run_dir / "tb")
    training_config = peft_trainer.TrainingConfig(
        # No eval set is passed, so this never fires; the field is required.
        eval_every_n_steps=cfg.max_steps + 1,
        max_steps=cfg.max_steps,
        checkpoint_root_directory=str(run_dir / "checkpoints"),
        checkpointing_options=ocp.CheckpointManagerOptions(
            save_interval_steps=cfg.save_every_steps, max_to_keep=3
        ),
        metrics_logging_options=metrics_logger.MetricsLoggerOptions(
            log_dir=tb_dir,
            # TensorBoard only: the default backend list would also try Weights & Biases,
            # which needs the network, whenever `wandb` happens to be installed.
            backend_kwargs={
                "custom_backend": [
                    lambda: metrics_logger.TensorboardBackend(
                        log_dir=tb_dir, flush_every_n_steps=1, flush_interval_s=5.0
                    )
                ]
            },
        ),
        pbar_description=None,
    )
    # A plain (not hyperparameter-injected) optimizer keeps the learning rate out of the
    # checkpointed optimizer state, so a resumed run uses the learning rate it is given.
    trainer = peft_trainer.PeftTrainer(model, optax.adamw(cfg.learning_rate), training_config)

    def model_inputs(batch: Any) -> dict[str, Any]:
        return {
            "input_tokens": batch.input_tokens,
            "input_mask": batch.input_mask,
            "positions": sft_utils.build_positions_from_mask(batch.input_mask),
            "attention_mask": sft_utils.make_causal_attn_mask(batch.input_mask),
        }

    reporter = ProgressReporter(cfg.learning_rate)

    # Tunix reports step N only after step N+1 has run and the last step from its close(),
    # after on_train_end; so nothing here treats on_train_end as "all steps reported".
    class Hooks(hooks.TrainingHooks):  # type: ignore[misc]
        def on_train_start(self, train_ctx: Any) -> None:
            pass

        def on_train_end(self, train_ctx: Any) -> None:
            pass

        def on_train_step_start(self, train_ctx: Any) -> None:
            pass

        def on_train_step_end(self, train_ctx: Any, train_step: int, train_loss: float) -> None:
            extra = {
                name: value
                for name in ("perplexity", "grad_norm")
                if (value := _last_metric(train_ctx, name)) is not None
            }
            reporter.report(int(train_step), float(train_loss), extra)

        def on_eval_step_start(self, train_ctx: Any) -> None:
            pass

        def on_eval_step_end(self, train_ctx: Any, eval_loss: float) -> None:
            pass

    trainer.with_gen_model_input_fn(model_inputs)
    trainer.with_training_hooks(Hooks())

    resumed_from = int(trainer.train_steps)
    reporter.last_step = resumed_from
    if resumed_from >= cfg.max_steps:
        trainer.close()
        print(
            f"tiny_sft: done, checkpoint already at step {resumed_from}; nothing to train",
            flush=True,
        )
        return 0
    if resumed_from:
        print(f"tiny_sft: resuming from checkpoint step {resumed_from}", flush=True)

    batches = (
        peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)
        for tokens, mask in iter_batches(encoded, cfg.batch_size, cfg.seq_len, cfg.seed)
    )
    try:
        # train() ends with trainer.close(), which reports the last step and blocks until
        # Orbax has committed every asynchronous save.
        trainer.train(batches)
    except BaseException:
        # Let in-flight saves finish so no half-written *.orbax-checkpoint-tmp dir is left.
        trainer.checkpoint_manager.close()
        raise

    if reporter.last_loss is None:
        print("tiny_sft: error: training ended without reporting a step", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(
        f"tiny_sft: done, final loss {reporter.last_loss:.4f} "
        f"(step {reporter.last_step}, {elapsed:.1f} s)",
        flush=True,
    )
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runs.entrypoints.tiny_sft",
        description="Tiny real Tunix SFT run on CPU (random-weight Qwen3, char tokens).",
    )
    parser.add_argument("--config", type=Path, required=True, help="config.json of the run")
    parser.add_argument("--run-dir", type=Path, required=True, help="where outputs go")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="JSONL of {prompt, completion} records"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        cfg, warnings = load_config(args.config)
        documents, data_desc = load_documents(args.dataset)
    except UsageError as exc:
        print(f"tiny_sft: error: {exc}", file=sys.stderr, flush=True)
        return 2
    for warning in warnings:
        print(f"tiny_sft: warning: {warning}", file=sys.stderr, flush=True)

    # JAX reads these when it is first imported, which happens inside train().
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    run_dir: Path = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(cfg, documents, data_desc, run_dir)


if __name__ == "__main__":
    sys.exit(main())

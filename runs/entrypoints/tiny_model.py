"""A tiny random-weight Qwen3 in Hugging Face layout, built offline, for runs that need a model.

The `peft` and `grpo` recipes load their model through Tunix's own loading code, which reads a
Hugging Face directory: `config.json`, `*.safetensors` weights named as in `transformers`' Qwen3,
and a tokenizer (`tokenizer.json`, `tokenizer_config.json`). Nothing that small can be downloaded
here, so TunixOps builds one: a 2-layer Qwen3 with random weights (seeded, so every build is
byte-identical) and a byte-level BPE tokenizer trained with `tokenizers` on the built-in corpus.

It is built on first use by the child that needs it, in the directory the recipe names as the
model's download path (`<TUNIX_MODEL_CACHE>/qwen3-tiny`, by default `var/models/qwen3-tiny`), and
reused by later runs while the builder's version is the same: concurrent runs take a file lock,
the first builds into a temporary directory beside it and renames it into place, the others find
it done. Building takes about a second.

Django-free and importable without JAX: the worker process never imports it.
"""

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runs.entrypoints.specs import TINY_MODEL_ID

CORPUS_PATH = Path(__file__).with_name("corpus.txt")

MODEL_ID = TINY_MODEL_ID
CONFIG_ID = "qwen3_tiny"
# Bump when the weights, tokenizer or layout change, so a cache of an older build is rebuilt.
VERSION = 1
COMPLETE_MARKER = ".tunixops-tiny-model"

VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"  # noqa: S105 (a token of text, not a secret)
PAD_TOKEN = "<|endoftext|>"  # noqa: S105
# The Qwen chat layout, so a prompt built with `apply_chat_template` looks like a real one.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

HF_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
    "hidden_act": "silu",
    "attention_bias": False,
    "torch_dtype": "float32",
    "bos_token_id": None,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def tunix_config_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The `tunix.models.qwen3.model.ModelConfig` fields a Hugging Face Qwen3 config.json gives."""
    return {
        "num_layers": int(config["num_hidden_layers"]),
        "vocab_size": int(config["vocab_size"]),
        "embed_dim": int(config["hidden_size"]),
        "hidden_dim": int(config["intermediate_size"]),
        "num_heads": int(config["num_attention_heads"]),
        "head_dim": int(config["head_dim"]),
        "num_kv_heads": int(config["num_key_value_heads"]),
        "rope_theta": int(config["rope_theta"]),
        "norm_eps": float(config["rms_norm_eps"]),
        "use_tied_embedding": bool(config["tie_word_embeddings"]),
    }


def _weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random weights under `transformers`' Qwen3 names and shapes ([out, in] for linears)."""
    rng = np.random.default_rng(seed)
    d, f = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads, hd = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update(
            {
                p + "self_attn.q_proj.weight": normal(heads * hd, d),
                p + "self_attn.k_proj.weight": normal(kv_heads * hd, d),
                p + "self_attn.v_proj.weight": normal(kv_heads * hd, d),
                p + "self_attn.o_proj.weight": normal(d, heads * hd),
                p + "self_attn.q_norm.weight": ones(hd),
                p + "self_attn.k_norm.weight": ones(hd),
                p + "mlp.gate_proj.weight": normal(f, d),
                p + "mlp.up_proj.weight": normal(f, d),
                p + "mlp.down_proj.weight": normal(d, f),
                p + "input_layernorm.weight": ones(d),
                p + "post_attention_layernorm.weight": ones(d),
            }
        )
    weights["model.norm.weight"] = ones(d)
    if not config["tie_word_embeddings"]:
        weights["lm_head.weight"] = normal(config["vocab_size"], d)
    return weights


def _train_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build(directory: Path, *, seed: int = 0) -> None:
    """Write the whole model into `directory` (which must exist and be empty)."""
    from safetensors.numpy import save_file

    tokenizer = _train_tokenizer([CORPUS_PATH.read_text(encoding="utf-8")])
    config = dict(HF_CONFIG)
    config["vocab_size"] = VOCAB_SIZE
    config["pad_token_id"] = tokenizer.token_to_id(PAD_TOKEN)
    config["eos_token_id"] = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS_TOKEN,
                "pad_token": PAD_TOKEN,
                "bos_token": None,
                "unk_token": None,
                "model_max_length": config["max_position_embeddings"],
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(
        _weights(config, seed), str(directory / "model.safetensors"), metadata={"format": "pt"}
    )


def is_built(directory: Path) -> bool:
    marker = directory / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == f"{MODEL_ID} v{VERSION}"


def ensure(directory: Path) -> Path:
    """`directory` holding the model, built first when it is missing or from an older builder."""
    if is_built(directory):
        return directory
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f".{directory.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(directory):
            return directory
        # A build killed half-way, or an older one, is replaced whole.
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=parent))
        try:
            build(staging)
            (staging / COMPLETE_MARKER).write_text(f"{MODEL_ID} v{VERSION}\n")
            shutil.rmtree(directory, ignore_errors=True)
            os.rename(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return directory

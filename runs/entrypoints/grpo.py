"""The `grpo` recipe's child: Tunix's GRPO pipeline (`tunix.cli.grpo_main`) on TunixOps' terms.

    python -m runs.entrypoints.grpo CONFIG.yaml key=value ...

Arguments are exactly `tunix.cli.grpo_main`'s. The pipeline is Tunix's own `GrpoPipeline` (config
parsing, models, rollouts, `GrpoLearner`, rewards, data module, checkpoints, TensorBoard metrics);
what this module adds is in runs/entrypoints/tunix_runtime.py: the tiny model's size and local
files, and a device mesh on hardware without device coordinates (CPU), where grpo_main itself
stops with "coord-based allocation could not construct a valid box". A run forked from a `peft`
run's checkpoint starts its actor and reference from that run's LoRA adapters
(runs/entrypoints/lora_fork.py).

Exit status: 0 when training finished, 2 for a parent checkpoint it cannot start from, 1
otherwise. Django-free; JAX is imported only once `main` runs.
"""

import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str]) -> int:
    from tunix.cli import grpo_main

    from runs.entrypoints import lora_fork, tunix_runtime

    tunix_runtime.install()

    class Pipeline(grpo_main.GrpoPipeline):  # type: ignore[misc]
        def create_role_to_mesh(self) -> Any:
            return tunix_runtime.role_meshes(self) or super().create_role_to_mesh()

        def create_rl_cluster(self, tokenizer: Any) -> Any:
            own = str(self.config["rl_training_config"].get("checkpoint_root_directory") or "")
            parent = lora_fork.parent_step(own)
            if parent is None:
                return super().create_rl_cluster(tokenizer)
            return lora_fork.rl_cluster(self, tokenizer, parent)

    try:
        pipeline = Pipeline(list(argv))
        tunix_runtime.prepare_models(pipeline.config)
        pipeline.run_grpo_trainer()
    except lora_fork.ForkError as exc:
        print(f"grpo: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print("grpo: done", flush=True)
    return 0


if __name__ == "__main__":
    from absl import app

    app.run(lambda argv: sys.exit(main(argv)), argv=["runs.entrypoints.grpo", *sys.argv[1:]])

"""A worker's accelerators: which run holds which device, and what a child is told about them.

The worker is given its device ids (`--devices 0,1,2,3`, `TUNIX_WORKER_DEVICES`) and their kind
(`gpu` or `tpu`). A claimed run takes as many free ids as it asks for, keeps them until its
execution has ended (its processes are all gone), and sees exactly those through the standard
variables; a run without devices sees none, so JAX in it cannot take the host's accelerators.
"""

import threading
import uuid

GPU = "gpu"
TPU = "tpu"
KINDS = (GPU, TPU)

# One process on a subset of a TPU host's chips: its chips' shape (libtpu's documented settings).
TPU_CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}
TPU_FIRST_PORT = 8476


class DevicePool:
    def __init__(self, kind: str = "", ids: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.ids = ids
        self._held: dict[uuid.UUID, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._held.values())

    def free(self) -> list[str]:
        with self._lock:
            held = {device for ids in self._held.values() for device in ids}
        return [device for device in self.ids if device not in held]

    def pick(self, count: int) -> tuple[str, ...]:
        """The ids a run asking for `count` devices would get (lowest free ids first)."""
        free = self.free()
        if count > len(free):
            raise ValueError(f"{count} devices asked, {len(free)} free")
        return tuple(free[:count])

    def hold(self, run_id: uuid.UUID, ids: tuple[str, ...]) -> None:
        with self._lock:
            self._held[run_id] = ids

    def release(self, run_id: uuid.UUID) -> None:
        with self._lock:
            self._held.pop(run_id, None)

    def holders(self) -> dict[uuid.UUID, tuple[str, ...]]:
        with self._lock:
            return dict(self._held)


def device_env(kind: str, ids: tuple[str, ...]) -> dict[str, str]:
    """What a child with these devices must see (only its own), for the worker's device kind.

    GPUs: `CUDA_VISIBLE_DEVICES`, and JAX's preallocation of most of each GPU's memory turned off
    so a run takes what it uses. TPU chips: `TPU_VISIBLE_CHIPS` (and the older
    `TPU_VISIBLE_DEVICES`) with the chips' bounds for one process and a mesh controller port of
    its own, so that runs on disjoint chips of one host do not collide.
    """
    if kind == GPU:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(ids)}
        if ids:
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        return env
    if kind == TPU:
        if not ids:
            return {"TPU_VISIBLE_CHIPS": "", "TPU_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
        if len(ids) not in TPU_CHIP_BOUNDS:
            raise ValueError(f"a TPU run takes 1, 2, 4 or 8 chips of one host, not {len(ids)}")
        port = str(TPU_FIRST_PORT + int(ids[0]))
        return {
            "TPU_VISIBLE_CHIPS": ",".join(ids),
            "TPU_VISIBLE_DEVICES": ",".join(ids),
            "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_CHIP_BOUNDS[len(ids)],
            "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
            "TPU_MESH_CONTROLLER_PORT": port,
        }
    return {}

"""A test-only callback: at the end of training each rank writes a digest of every trainable and EMA tensor.

Used by test_ddp_training.py through `+callbacks.digest._target_=ddp_digest.WeightsDigest` (tests/ on PYTHONPATH).
"""

import hashlib
import json
from pathlib import Path

import lightning as L


class WeightsDigest(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module):
        digests = {}
        for name, tensor in pl_module.state_dict().items():
            if tensor.is_floating_point():
                digests[name] = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step,
                  "kimg": float(pl_module.kimg), "digests": digests}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

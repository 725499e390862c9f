"""A test-only callback: at the end of training each rank writes a digest of every trainable and EMA tensor, with
Lightning's step count, the batches trained on, the images seen and the method's declared optimizer steps per training step.

Used by test_ddp_training.py and test_fsdp_training.py through `+callbacks.digest._target_=ddp_digest.WeightsDigest`
(tests/ on PYTHONPATH).
"""

import hashlib
import json
from pathlib import Path

import lightning as L
from torch.distributed.tensor import DTensor


class WeightsDigest(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module):
        digests = {}
        for name, tensor in pl_module.state_dict().items():
            if isinstance(tensor, DTensor):  # a shard under FSDP: gathered (every rank takes part, in the same order)
                tensor = tensor.full_tensor()
            if tensor.is_floating_point():
                digests[name] = hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        record = {"world_size": trainer.world_size, "global_step": trainer.global_step,
                  "training_steps": trainer.fit_loop.epoch_loop.batch_progress.total.completed,
                  "kimg": float(pl_module.kimg), "digests": digests,
                  "optimizer_steps_per_training_step": pl_module.optimizer_steps_per_training_step}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

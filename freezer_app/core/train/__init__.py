"""Training: setup (setup.py), the loop (trainer.py), the checkpoint (checkpoint.py) and the
run's line logs (logbook.py). `Trainer(project, run_dir).run()` is the entry point."""

from freezer_app.core.train.checkpoint import CHECKPOINT_VERSION
from freezer_app.core.train.setup import seed_everything
from freezer_app.core.train.trainer import Trainer, logits_of

__all__ = ["CHECKPOINT_VERSION", "Trainer", "logits_of", "seed_everything"]

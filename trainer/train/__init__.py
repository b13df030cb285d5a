"""Streaming training: progressive validation, checkpoints, resume, distributed (DMP) runs."""

from exfm_trainer.train.loop import RunResult, StreamingTrainer, TrainingError, run_training

__all__ = ["RunResult", "StreamingTrainer", "TrainingError", "run_training"]

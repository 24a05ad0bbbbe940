"""The training engine: TrainConfig, train (one visible loop), predict (inference in dataset order)."""
from .config import TrainConfig
from .loop import NonFiniteError, TrainResult, predict, train, train_step

__all__ = ["NonFiniteError", "TrainConfig", "TrainResult", "predict", "train", "train_step"]

"""The training engine: TrainConfig, train (one visible loop), predict (inference in dataset order)."""
from llama_ft.train.config import TrainConfig
from llama_ft.train.loop import NonFiniteError, TrainResult, predict, train, train_step

__all__ = ["NonFiniteError", "TrainConfig", "TrainResult", "predict", "train", "train_step"]

"""The training engine: TrainConfig, train (one visible loop), predict (inference in dataset order)."""
from llama_ft.train.config import TrainConfig
from llama_ft.train.divergence import DivergenceError, NonFiniteError, TrainingError
from llama_ft.train.loop import TrainResult, predict, train, train_step

__all__ = ["DivergenceError", "NonFiniteError", "TrainConfig", "TrainResult", "TrainingError", "predict", "train",
           "train_step"]

"""The training engine: TrainConfig, train (one visible loop), predict (inference in dataset order), and
predict_versions (the weights before and after training over one pass of the frozen bottom)."""
from llama_ft.train.config import TrainConfig
from llama_ft.train.divergence import DivergenceError, NonFiniteError, TrainingError
from llama_ft.train.loop import TrainResult, apply_training_policy, predict, prepare_for_training, train, train_step
from llama_ft.train.versions import VersionScores, predict_versions

__all__ = ["DivergenceError", "NonFiniteError", "TrainConfig", "TrainResult", "TrainingError", "VersionScores",
           "apply_training_policy", "predict", "predict_versions", "prepare_for_training", "train", "train_step"]

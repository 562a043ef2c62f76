"""Training: config and schedules, recipes, the loop with callbacks, checkpoints."""

from .callbacks import Callback, Checkpoint, Evaluate, JsonlLog, LambdaCallback, MLflowLog, ProgressBar, StopAfter, TensorBoardLog, evaluate
from .checkpoint import CheckpointError, atomic_save, load_checkpoint
from .config import OPTIMIZERS, SCHEDULES, TrainConfig
from .recipes import RECIPES, Recipe, get_recipe, list_recipes
from .trainer import Trainer, TrainingDiverged, TrainingStalled, TrainResult, build_loaders, default_device, fit, summarize

__all__ = [
    "OPTIMIZERS", "RECIPES", "SCHEDULES", "Callback", "Checkpoint", "CheckpointError", "Evaluate", "JsonlLog",
    "LambdaCallback", "MLflowLog", "ProgressBar", "Recipe", "StopAfter", "TensorBoardLog", "TrainConfig", "TrainResult", "Trainer",
    "TrainingDiverged", "TrainingStalled",
    "atomic_save", "build_loaders", "default_device", "evaluate", "fit", "get_recipe", "list_recipes",
    "load_checkpoint", "summarize",
]

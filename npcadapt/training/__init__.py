"""Training: base policies with PPO on gymnasium envs (per-player adapter training lives beside it)."""

from .base import BaseTrainConfig, BaseTrainResult, evaluate_policy, make_env, train_base

__all__ = ["BaseTrainConfig", "BaseTrainResult", "evaluate_policy", "make_env", "train_base"]

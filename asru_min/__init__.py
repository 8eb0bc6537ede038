"""asru_min: a minimal, readable reference implementation of ASRU
(Activation Steering Meets Reinforcement Unlearning for Multimodal LLMs, arXiv 2605.15687)
on a from-scratch Qwen3-VL in plain PyTorch."""

__version__ = "0.1.0"

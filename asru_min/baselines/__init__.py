"""Beside the method: the unlearning baselines ASRU is compared with (GA, GradDiff, KL-Min, NPO, refusal SFT),
in methods.py; `python -m asru_min.baselines --method npo` trains and evaluates one."""

"""Weight-sharing NAS: elastic supernets (MobileNetV2 and ResNet families) trained once with the sandwich
rule and in-place distillation, subnet extraction to plain modules, an accuracy predictor and a per-block
cost lookup table that score many subnets per second, and an Optuna NSGA-II search on those predictions
(`hwai nas`).

The plain subnets an extracted subnet becomes are zoo models (hwai.models.subnet).
"""

"""Weight-sharing NAS: elastic supernets (MobileNetV2 and ResNet families) trained once with the sandwich
rule and in-place distillation, subnet extraction to plain modules, an accuracy predictor and a per-block
cost lookup table that score many subnets per second, and an Optuna NSGA-II search on those predictions
(`hwai nas`).

Kept light: the zoo imports `hwai.nas.subnet` (plain subnet factories); the rest loads on use.
"""

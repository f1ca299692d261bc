"""The one supervised training loop (train, retrain baseline, audit references) and evaluation."""

"""cifarlab: train, diagnose and compare small image classifiers on CIFAR-10 and image folders."""

__version__ = "0.1.0"

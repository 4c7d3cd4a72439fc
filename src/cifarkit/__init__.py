"""cifarkit: train, evaluate and ship CIFAR classifiers under a parameter budget."""

__version__ = "0.1.0"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

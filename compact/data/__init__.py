"""Datasets held in memory and batched tensor augmentation (Fashion-MNIST is the embedded default)."""

from compact.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from compact.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from compact.data.idx import read_idx
from compact.data.memory import ArrayDataset, InMemoryLoader, random_crop_flip

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ArrayDataset",
    "InMemoryLoader",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "random_crop_flip",
    "read_idx",
]

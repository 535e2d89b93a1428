"""Datasets (Fashion-MNIST is the embedded default; CIFAR-10/100; image folders) and batched augmentation."""

from compact.data.cifar import load_cifar
from compact.data.datasets import DATASETS, Data, DataOptions, check_dataset_name, list_datasets, load_data
from compact.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from compact.data.fashion_mnist import find_fashion_mnist, load_fashion_mnist
from compact.data.idx import read_idx
from compact.data.memory import ArrayDataset, InMemoryLoader, random_crop_flip

__all__ = [
    "check_dataset_name",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "ArrayDataset",
    "Data",
    "DataOptions",
    "InMemoryLoader",
    "find_fashion_mnist",
    "list_datasets",
    "load_cifar",
    "load_data",
    "load_fashion_mnist",
    "random_crop_flip",
    "read_idx",
]

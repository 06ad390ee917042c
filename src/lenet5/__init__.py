"""LeNet-5 as LeCun, Bottou, Bengio and Haffner specified it in 1998, and its modern variants."""

from lenet5.data import MNISTDataModule
from lenet5.losses import MAPLoss, MLELoss
from lenet5.module import LeNet5Module
from lenet5.network import LeNet5

__all__ = ["LeNet5", "LeNet5Module", "MAPLoss", "MLELoss", "MNISTDataModule"]

"""convssl: self-supervised pretraining toolkit for convolutional networks.

Importing the package is cheap: it pulls in no optional dependency (timm, spconv)
and touches no GPU. Submodules are imported on use.
"""

__version__ = "0.1.0"

"""ExFM trainer: foundation model, data augmentation and vertical models.

The top-level package and its light contracts (``schema``, ``jobs``, ``layout``, ``storage``)
never import torch, so the operator can use them.
"""

__version__ = "0.1.0"

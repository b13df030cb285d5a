"""ExFM control plane: API models, the pure reconcile planner, kopf handlers, TorchX launcher,
local runner and CLI. Never imports torch."""

__version__ = "0.1.0"

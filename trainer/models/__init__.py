"""Models: the foundation model (teacher), the vertical model (student), losses, checkpoints, export.

Importing this package imports torch and torchrec.
"""

from exfm_trainer.models.fm import FoundationModel
from exfm_trainer.models.presets import FM_PRESETS, VM_PRESETS, FMPreset, VMPreset
from exfm_trainer.models.vm import VerticalModel, VMOutput

__all__ = ["FM_PRESETS", "VM_PRESETS", "FMPreset", "FoundationModel", "VMOutput", "VMPreset", "VerticalModel"]

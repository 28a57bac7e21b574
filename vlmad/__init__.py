"""vlmad: industrial image anomaly detection with vision-language models.

The top-level package stays import-light: ``import vlmad`` and ``vlmad --help`` never import torch.
"""

__version__ = "0.1.0"

from vlmad.hf import drop_deepspeed_cpu_notice as _drop_deepspeed_cpu_notice

_drop_deepspeed_cpu_notice()

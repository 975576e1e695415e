"""reprodiff-record: record a diffusers pipeline run step by step, so that `reprodiff diff`
can say where two runs part and why.

    from reprodiff_record import record
    images = record(pipe, "runs/mine", prompt="a cat", generator=torch.Generator().manual_seed(0))
"""

from .environment import fingerprint
from .recorder import SCHEMA, VERSION, Recording, record, recording

__all__ = ["SCHEMA", "VERSION", "Recording", "fingerprint", "record", "recording"]

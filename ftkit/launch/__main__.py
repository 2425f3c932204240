"""`python -m ftkit.launch ddp|fsdp` prints the path of a shipped accelerate config."""

import sys

from ftkit.launch import config_path

print(config_path(sys.argv[1] if len(sys.argv) > 1 else "ddp"))

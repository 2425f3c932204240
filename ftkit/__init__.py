"""ftkit: a notebook-centred kit for learning LLM fine-tuning, from "which model?" to
"was it worth it?". The notebooks in notebooks/ teach it; this package holds the logic."""

from ftkit.cache import verify_cache
from ftkit.catalog import (
    CATALOG,
    GPU,
    GPUS,
    ModelInfo,
    UnknownModelError,
    get_gpu,
    get_model_info,
    list_models,
)
from ftkit.doctor import doctor, package_versions
from ftkit.generation import Reply, generate_replies
from ftkit.hardware import HardwareInfo, detect_hardware, pick_dtype
from ftkit.memory import FitRow, MemoryEstimate, check_fit, estimate_memory, fit_verdict
from ftkit.models import (
    EMBEDDED_MODEL,
    ModelLoadError,
    embedded_model_dir,
    keep_4bit_trainable,
    load_model,
)

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "EMBEDDED_MODEL",
    "GPU",
    "GPUS",
    "FitRow",
    "HardwareInfo",
    "MemoryEstimate",
    "ModelInfo",
    "ModelLoadError",
    "Reply",
    "UnknownModelError",
    "__version__",
    "check_fit",
    "detect_hardware",
    "doctor",
    "embedded_model_dir",
    "estimate_memory",
    "fit_verdict",
    "generate_replies",
    "get_gpu",
    "get_model_info",
    "keep_4bit_trainable",
    "list_models",
    "load_model",
    "package_versions",
    "pick_dtype",
    "verify_cache",
]

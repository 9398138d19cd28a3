"""Architectures a checkpoint can be loaded into, by name plus arguments (models.md).

A checkpoint is only weights, so the names and shapes of every parameter below are a contract
with clients who train these definitions themselves: a state dict written by plain PyTorch code
following models.md loads strictly (``tests/gif/test_registry.py`` checks this).

Built-ins: ``linear``, ``mlp``, ``tinynet``, ``resnet18``, ``vgg11``.

Plugins — entry-point group ``gif_service.architectures``
---------------------------------------------------------
Operators add architectures without editing this project by declaring, in their own package::

    [project.entry-points."gif_service.architectures"]
    widenet = "my_package.models:widenet"

The entry-point *name* is the architecture's name. The object it points to is either

- an :class:`Architecture` instance, or
- a zero-argument factory returning an :class:`Architecture`, or
- a zero-argument factory returning a *builder*: a callable ``builder(**arch_kwargs) -> nn.Module``
  whose keyword parameters (with annotations ``int``, ``float``, ``bool``, ``str`` or
  ``list[int]`` and defaults) become the architecture's arguments.

A plugin cannot replace a built-in name, and a plugin that fails to load is skipped (and
reported by :func:`plugin_errors`) so one broken package cannot take the service down.
Discovery runs on every call (no cache), so there is no global state to invalidate.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import torch
from torch import nn

from gif.errors import InvalidRequest, UnknownArchitecture
from gif.fit import ModelIO
from gif.spec import ModelSpec

ENTRY_POINT_GROUP = "gif_service.architectures"

# A spec that would allocate more than this many parameters is refused before anything is
# allocated (the size is measured on the meta device), so a typo cannot exhaust memory.
MAX_PARAMETERS = 300_000_000
# Every integer argument is bounded and every list argument short, so a spec can neither
# overflow a size computation nor make building even the meta model slow.
MAX_INT_ARGUMENT = 2**31 - 1
MAX_LIST_ARGUMENT_ITEMS = 64

_REQUIRED = object()  # sentinel default: the argument must be given

ArgType = typing.Literal["int", "float", "bool", "str", "list[int]", "any"]


@dataclass(frozen=True)
class ArchArgument:
    """One keyword argument of an architecture, as listed by ``GET /v1/architectures``."""

    name: str
    type: ArgType
    default: Any = _REQUIRED
    description: str = ""
    minimum: int | None = None  # for int and list[int]: smallest allowed value
    maximum: int = MAX_INT_ARGUMENT  # for int and list[int]: largest allowed value
    max_items: int = MAX_LIST_ARGUMENT_ITEMS  # for list[int]: longest allowed list

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def to_dict(self) -> dict:
        out = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            out["default"] = _json_safe(self.default)
        if self.description:
            out["description"] = self.description
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.type in ("int", "list[int]"):
            out["maximum"] = self.maximum
        if self.type == "list[int]":
            out["max_items"] = self.max_items
        return out

    def check(self, value: Any) -> Any:
        """The value, validated against ``type``/``minimum``; raises ``ValueError`` saying why."""
        if self.type == "any":
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be a boolean, got {_json_type(value)}")
            return value
        if self.type == "int":
            return self._check_int(value)
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"must be a number, got {_json_type(value)}")
            if not math.isfinite(value):
                raise ValueError("must be finite")
            return float(value)
        if self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {_json_type(value)}")
            return value
        if self.type == "list[int]":
            if not isinstance(value, list | tuple):
                raise ValueError(f"must be a list of integers, got {_json_type(value)}")
            if len(value) > self.max_items:
                raise ValueError(f"must have at most {self.max_items} items, got {len(value)}")
            return [self._check_int(v, where=f"item {i} ") for i, v in enumerate(value)]
        raise ValueError(f"unsupported argument type {self.type!r}")  # pragma: no cover

    def _check_int(self, value: Any, where: str = "") -> int:
        # JSON has no int/bool distinction problem, but Python does: True is an int.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}must be an integer, got {_json_type(value)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{where}must be >= {self.minimum}, got {value}")
        if value > self.maximum:
            raise ValueError(f"{where}must be <= {self.maximum}, got {_shown(value)}")
        return value


def _json_safe(value: Any) -> Any:
    """A plugin's default as JSON: numbers, strings, booleans, null and lists of them as they
    are, anything else by its ``repr`` (so the listing never fails to serialise)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return repr(value)


def _shown(value: int) -> str:
    return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
             tuple: "list", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Architecture:
    """A named model family: ``builder(**kwargs)`` returns a fresh ``nn.Module``.

    ``flat_input``: the model takes ``N×F`` (images are flattened for it).
    ``shape_of(kwargs)``: the expected per-sample input shape; an entry ``None`` means any size
    works in that dimension (e.g. ``(3, None, None)`` for ``resnet18``); ``shape_of`` itself
    ``None`` means nothing is known."""

    name: str
    description: str
    builder: Callable[..., nn.Module]
    arguments: tuple[ArchArgument, ...] = ()
    flat_input: bool = False
    shape_of: Callable[[dict], tuple | None] | None = field(default=None, repr=False)

    def resolve_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value type-checked; errors carry ``loc`` of the key."""
        known = {a.name: a for a in self.arguments}
        for key in kwargs:
            if key not in known:
                allowed = ", ".join(known) or "none"
                raise InvalidRequest(
                    f"unknown argument {key!r} for architecture {self.name!r} "
                    f"(allowed: {allowed})",
                    loc=("spec", "arch_kwargs", key),
                )
        resolved = {}
        for arg in self.arguments:
            if arg.name not in kwargs:
                if arg.required:
                    raise InvalidRequest(
                        f"architecture {self.name!r} needs argument {arg.name!r} ({arg.type})",
                        loc=("spec", "arch_kwargs", arg.name),
                    )
                resolved[arg.name] = arg.default
                continue
            try:
                resolved[arg.name] = arg.check(kwargs[arg.name])
            except ValueError as err:
                raise InvalidRequest(
                    f"argument {arg.name!r} of {self.name!r} {err}",
                    loc=("spec", "arch_kwargs", arg.name),
                ) from None
        return resolved

    def input_shape(self, kwargs: Mapping[str, Any]) -> tuple | None:
        """Expected per-sample input shape for these (unresolved) kwargs, or None if unknown."""
        if self.shape_of is None:
            return None
        return self.shape_of(self.resolve_kwargs(kwargs))

    def to_dict(self) -> dict:
        """JSON-able description for ``GET /v1/architectures``."""
        return {
            "name": self.name,
            "description": self.description,
            "arguments": [a.to_dict() for a in self.arguments],
            "flat_input": self.flat_input,
        }


# --------------------------------------------------------------------------- built-ins


def build_linear(in_features: int, num_classes: int) -> nn.Module:
    """One ``nn.Linear``: keys ``weight``, ``bias``."""
    return nn.Linear(in_features, num_classes)


def build_mlp(in_features: int, hidden: list[int], num_classes: int) -> nn.Module:
    """``nn.Sequential`` of Linear+ReLU pairs then a Linear: keys ``0.weight``, ``2.weight``, …"""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _after_stride2_convs(size: int, count: int) -> int:
    # Conv2d(k=3, stride=2, padding=1): out = floor((n - 1) / 2) + 1.
    for _ in range(count):
        size = (size - 1) // 2 + 1
    return size


class TinyNet(nn.Module):
    """The paper's backdoor CNN (models.md): four stride-2 3×3 convs with ReLU, then ``fc``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(128, 256, 3, stride=2, padding=1)
        side = _after_stride2_convs(input_size, 4)
        self.fc = nn.Linear(256 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        return self.fc(torch.flatten(x, 1))


def build_resnet18(in_channels: int = 3, num_classes: int = 1000,
                   small_input: bool = False) -> nn.Module:
    """torchvision ``resnet18`` (no weights downloaded).

    ``small_input`` uses a 3×3 stride-1 stem and no max-pool (the CIFAR/MNIST form)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


class VGG11(nn.Module):
    """CIFAR-style VGG-11: torchvision's ``cfgs["A"]`` features, then ``Linear(512, C)``.

    On 32×32 input the five max-pools leave 512×1×1, so the classifier sees 512 features."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, batch_norm: bool = True):
        super().__init__()
        from torchvision.models.vgg import cfgs

        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfgs["A"]:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, int(item), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(item)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


_POSITIVE = 1
_BUILTINS: tuple[Architecture, ...] = (
    Architecture(
        name="linear",
        description="One nn.Linear (logistic / linear regression); keys weight, bias.",
        builder=build_linear,
        arguments=(
            ArchArgument("in_features", "int", description="input features F", minimum=_POSITIVE),
            ArchArgument("num_classes", "int", description="outputs", minimum=_POSITIVE),
        ),
        flat_input=True,
        shape_of=lambda kw: (kw["in_features"],),
    ),
    Architecture(
        name="mlp",
        description="nn.Sequential of Linear+ReLU pairs then a Linear; keys 0.weight, 0.bias, "
        "2.weight, ...",
        builder=build_mlp,
        arguments=(
            ArchArgument("in_features", "int", description="input features F", minimum=_POSITIVE),
            ArchArgument("hidden", "list[int]", description="hidden widths", minimum=_POSITIVE),
            ArchArgument("num_classes", "int", description="outputs", minimum=_POSITIVE),
        ),
        flat_input=True,
        shape_of=lambda kw: (kw["in_features"],),
    ),
    Architecture(
        name="tinynet",
        description="The paper's backdoor CNN: four stride-2 3x3 convs (32, 64, 128, 256) with "
        "ReLU, then fc; 398,090 parameters for the defaults.",
        builder=TinyNet,
        arguments=(
            ArchArgument("in_channels", "int", 1, "image channels", minimum=_POSITIVE),
            ArchArgument("num_classes", "int", 10, "outputs", minimum=_POSITIVE),
            ArchArgument("input_size", "int", 28, "image height = width", minimum=_POSITIVE),
        ),
        shape_of=lambda kw: (kw["in_channels"], kw["input_size"], kw["input_size"]),
    ),
    Architecture(
        name="resnet18",
        description="torchvision resnet18 (keys are torchvision's); small_input swaps the stem "
        "for a 3x3 stride-1 conv1 and drops the max-pool (CIFAR/MNIST form).",
        builder=build_resnet18,
        arguments=(
            ArchArgument("in_channels", "int", 3, "image channels", minimum=_POSITIVE),
            ArchArgument("num_classes", "int", 1000, "outputs", minimum=_POSITIVE),
            ArchArgument("small_input", "bool", False, "3x3 stride-1 stem, no max-pool"),
        ),
        shape_of=lambda kw: (kw["in_channels"], None, None),
    ),
    Architecture(
        name="vgg11",
        description="CIFAR-style VGG-11: torchvision cfgs['A'] features (conv3x3 [+BN] + ReLU, "
        "max-pools) on 32x32 input, then classifier = Linear(512, num_classes).",
        builder=VGG11,
        arguments=(
            ArchArgument("in_channels", "int", 3, "image channels", minimum=_POSITIVE),
            ArchArgument("num_classes", "int", 10, "outputs", minimum=_POSITIVE),
            ArchArgument("batch_norm", "bool", True, "BatchNorm after every conv"),
        ),
        shape_of=lambda kw: (kw["in_channels"], 32, 32),
    ),
)


# --------------------------------------------------------------------------- plugins


_ANNOTATION_TYPES: dict[Any, ArgType] = {
    int: "int", float: "float", bool: "bool", str: "str", list[int]: "list[int]",
    "int": "int", "float": "float", "bool": "bool", "str": "str", "list[int]": "list[int]",
}


def architecture_from_builder(name: str, builder: Callable[..., nn.Module]) -> Architecture:
    """Wrap a plain builder: its keyword parameters become the architecture's arguments."""
    arguments = []
    for param in inspect.signature(builder).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = _REQUIRED if param.default is param.empty else param.default
        arg_type = _ANNOTATION_TYPES.get(param.annotation, "any")
        arguments.append(ArchArgument(param.name, arg_type, default))
    doc = inspect.getdoc(builder) or ""
    return Architecture(
        name=name,
        description=doc.splitlines()[0] if doc else f"plugin architecture {name}",
        builder=builder,
        arguments=tuple(arguments),
    )


def _architecture_from_entry_point(ep: metadata.EntryPoint) -> Architecture:
    obj = ep.load()
    if not isinstance(obj, Architecture):
        if not callable(obj):
            raise TypeError(f"{ep.value} is neither an Architecture nor callable")
        obj = obj()
    if isinstance(obj, Architecture):
        return obj if obj.name == ep.name else dataclasses.replace(obj, name=ep.name)
    if callable(obj):
        return architecture_from_builder(ep.name, obj)
    raise TypeError(f"{ep.value}() returned {type(obj).__name__}, not an Architecture or builder")


def _plugin_entry_points() -> list[metadata.EntryPoint]:
    builtin_names = {a.name for a in _BUILTINS}
    seen: set[str] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        # First on sys.path wins, like imports; built-in names are not replaceable.
        if ep.name in builtin_names or ep.name in seen:
            continue
        seen.add(ep.name)
        found.append(ep)
    return found


def plugin_errors() -> dict[str, str]:
    """Entry points of ``gif_service.architectures`` that fail to load, with the reason."""
    errors = {}
    for ep in _plugin_entry_points():
        try:
            _architecture_from_entry_point(ep)
        except Exception as err:  # a plugin's bug must not break the registry
            errors[ep.name] = f"{type(err).__name__}: {err}"
    return errors


# --------------------------------------------------------------------------- public API


def list_architectures() -> list[Architecture]:
    """Built-ins first, then every plugin that loads, each name once."""
    found = list(_BUILTINS)
    for ep in _plugin_entry_points():
        try:
            found.append(_architecture_from_entry_point(ep))
        except Exception:  # reported by plugin_errors(); skipping keeps the listing up
            continue
    return found


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``; ``UnknownArchitecture`` (loc spec.arch) otherwise."""
    for arch in _BUILTINS:
        if arch.name == name:
            return arch
    for ep in _plugin_entry_points():
        if ep.name == name:
            try:
                return _architecture_from_entry_point(ep)
            except Exception as err:
                raise UnknownArchitecture(
                    f"architecture {name!r} is registered but its plugin failed to load: "
                    f"{type(err).__name__}: {err}",
                    loc=("spec", "arch"),
                ) from None
    known = ", ".join(a.name for a in list_architectures())
    raise UnknownArchitecture(
        f"unknown architecture {name!r} (known: {known})", loc=("spec", "arch")
    )


def _build(arch: Architecture, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = arch.builder(**kwargs)
    except Exception as err:  # a plugin's builder may raise anything: report it, never a 500
        raise InvalidRequest(
            f"architecture {arch.name!r} cannot be built with {kwargs}: "
            f"{type(err).__name__}: {err}",
            loc=("spec", "arch_kwargs"),
        ) from None
    if not isinstance(model, nn.Module):
        raise InvalidRequest(
            f"architecture {arch.name!r} built a {type(model).__name__}, not an nn.Module",
            loc=("spec", "arch"),
        )
    return model


def build_meta_model(spec: ModelSpec, *, max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """The model on the ``meta`` device: names, shapes and dtypes without memory or compute
    (size and shape checks). A spec whose model has more than ``max_parameters`` parameters
    is refused (``InvalidRequest``)."""
    arch = get_architecture(spec.arch)
    kwargs = arch.resolve_kwargs(spec.arch_kwargs)
    with torch.device("meta"):
        model = _build(arch, kwargs)
    size = count_parameters(model)
    if size > max_parameters:
        raise InvalidRequest(
            f"architecture {arch.name!r} with {kwargs} has {size:,} parameters, "
            f"more than the limit {max_parameters:,}",
            loc=("spec", "arch_kwargs"),
        )
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(spec: ModelSpec, *, max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """A freshly initialised model for ``spec``, in eval mode, on the CPU.

    The size is measured on the meta device first (:func:`build_meta_model`), so an absurd
    spec is refused (``InvalidRequest``) before any memory is allocated."""
    build_meta_model(spec, max_parameters=max_parameters)
    arch = get_architecture(spec.arch)
    return _build(arch, arch.resolve_kwargs(spec.arch_kwargs)).eval()


PROBE_SIZE = 224  # a free dimension (``None`` in ``shape_of``) is probed at this size on meta


def model_io(spec: ModelSpec) -> ModelIO:
    """What ``spec``'s model takes and gives (:class:`gif.fit.ModelIO`), computed once at
    upload so job submission needs no torch: the architecture's sample shape, and the output
    count from one forward pass on the meta device (free dimensions probed at
    ``PROBE_SIZE``); None where an architecture cannot say (the worker checks at load)."""
    arch = get_architecture(spec.arch)
    shape = arch.input_shape(spec.arch_kwargs)
    expected = tuple(shape) if shape is not None else None
    return ModelIO(arch.name, expected, arch.flat_input, _probe_outputs(spec, expected))


def _probe_outputs(spec: ModelSpec, expected: tuple[int | None, ...] | None) -> int | None:
    if expected is None:
        return None
    probe = tuple(PROBE_SIZE if e is None else e for e in expected)
    try:
        model = build_meta_model(spec).eval()
        with torch.no_grad():
            out = model(torch.empty((1, *probe), device="meta"))
    except Exception:  # an op without a meta kernel, a shape the probe misses: unknown
        return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None

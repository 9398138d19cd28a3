"""The architectures of models.md: names and shapes are a contract with clients' own code."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from gif.errors import InvalidRequest, UnknownArchitecture
from gif.registry import (
    ENTRY_POINT_GROUP,
    Architecture,
    build_model,
    get_architecture,
    list_architectures,
    plugin_errors,
)
from gif.spec import ModelSpec

torch.set_num_threads(1)


def _spec(arch: str, **kwargs) -> ModelSpec:
    return ModelSpec(arch=arch, arch_kwargs=kwargs)


def _assert_same_function(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> None:
    """Load the client's state dict strictly into ours; both must compute the same outputs."""
    theirs.eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


# --- plain PyTorch written from models.md, independently of gif/registry.py -----------------


class ClientTinyNet(nn.Module):
    def __init__(self, c=1, k=10, s=2):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 32, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(128, 256, 3, stride=2, padding=1)
        self.fc = nn.Linear(256 * s * s, k)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return self.fc(x.flatten(1))


class ClientVGG11(nn.Module):
    def __init__(self, c=3, k=10, bn=True):
        super().__init__()
        layers = []
        for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1)]
                layers += [nn.BatchNorm2d(v)] if bn else []
                layers += [nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, k)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_tinynet_defaults_have_the_papers_parameter_count_and_keys():
    model = build_model(_spec("tinynet"))
    assert sum(p.numel() for p in model.parameters()) == 398_090
    assert list(model.state_dict()) == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "conv3", "conv4", "fc")
        for kind in ("weight", "bias")
    ]
    _assert_same_function(model, ClientTinyNet(), torch.randn(2, 1, 28, 28))


def test_tinynet_other_input_size_and_channels():
    model = build_model(_spec("tinynet", in_channels=3, num_classes=4, input_size=32))
    # 32 -> 16 -> 8 -> 4 -> 2 after four stride-2 convs
    _assert_same_function(model, ClientTinyNet(3, 4, 2), torch.randn(2, 3, 32, 32))
    model = build_model(_spec("tinynet", input_size=8))  # 8 -> 4 -> 2 -> 1 -> 1
    assert model.fc.in_features == 256


def test_linear_and_mlp_keys_match_plain_pytorch():
    _assert_same_function(build_model(_spec("linear", in_features=6, num_classes=3)),
                          nn.Linear(6, 3), torch.randn(4, 6))
    client = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    model = build_model(_spec("mlp", in_features=6, hidden=[5, 4], num_classes=3))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias",
                                        "4.weight", "4.bias"]
    _assert_same_function(model, client, torch.randn(4, 6))
    no_hidden = build_model(_spec("mlp", in_features=6, hidden=[], num_classes=3))
    _assert_same_function(no_hidden, nn.Sequential(nn.Linear(6, 3)), torch.randn(4, 6))


def test_vgg11_matches_the_cifar_definition_with_and_without_batch_norm():
    model = build_model(_spec("vgg11", num_classes=7))
    assert model.classifier.weight.shape == (7, 512)
    assert isinstance(model.features[1], nn.BatchNorm2d)
    client = ClientVGG11(3, 7, True)
    for module in client.modules():  # non-trivial running statistics must load too
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    _assert_same_function(model, client, torch.randn(2, 3, 32, 32))
    plain = build_model(_spec("vgg11", in_channels=1, batch_norm=False))
    _assert_same_function(plain, ClientVGG11(1, 10, False), torch.randn(2, 1, 32, 32))


def test_resnet18_is_torchvisions_with_the_small_input_stem():
    from torchvision.models import resnet18

    client = resnet18(weights=None, num_classes=5)
    client.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    client.maxpool = nn.Identity()
    model = build_model(_spec("resnet18", in_channels=1, num_classes=5, small_input=True))
    _assert_same_function(model, client, torch.randn(2, 1, 16, 16))

    default = build_model(_spec("resnet18"))
    assert default.conv1.weight.shape == (64, 3, 7, 7)
    assert default.fc.weight.shape == (1000, 512)
    assert isinstance(default.maxpool, nn.MaxPool2d)
    grey = build_model(_spec("resnet18", in_channels=1, num_classes=10))
    assert grey.conv1.weight.shape == (64, 1, 7, 7)


def test_input_shapes_and_flat_flags():
    assert get_architecture("tinynet").input_shape({}) == (1, 28, 28)
    assert get_architecture("tinynet").input_shape({"input_size": 32, "in_channels": 3}) == (
        3, 32, 32)
    mlp = get_architecture("mlp")
    assert mlp.flat_input
    assert mlp.input_shape({"in_features": 64, "hidden": [8], "num_classes": 10}) == (64,)
    assert get_architecture("vgg11").input_shape({"in_channels": 1}) == (1, 32, 32)
    assert get_architecture("resnet18").input_shape({}) == (3, None, None)
    assert not get_architecture("resnet18").flat_input


def test_listing_describes_arguments_with_defaults():
    listed = {a.name: a.to_dict() for a in list_architectures()}
    assert {"linear", "mlp", "tinynet", "resnet18", "vgg11"} <= set(listed)
    args = {a["name"]: a for a in listed["tinynet"]["arguments"]}
    assert args["input_size"] == {"name": "input_size", "type": "int", "required": False,
                                  "default": 28, "description": "image height = width",
                                  "minimum": 1, "maximum": 2**31 - 1}
    mlp_args = {a["name"]: a for a in listed["mlp"]["arguments"]}
    assert mlp_args["hidden"]["type"] == "list[int]" and mlp_args["hidden"]["required"]
    assert "default" not in mlp_args["hidden"]
    assert mlp_args["hidden"]["max_items"] == 64


def test_integer_and_list_arguments_are_bounded():
    """A huge integer or an endless list is a clear error naming the argument, never an
    overflow (or a slow build) further down."""
    mlp = get_architecture("mlp")
    base = {"in_features": 4, "hidden": [3], "num_classes": 3}
    for kwargs, word in (({**base, "in_features": 2**31}, "<= 2147483647"),
                         ({**base, "num_classes": 10**400}, "bits"),
                         ({**base, "hidden": [1] * 65}, "at most 64 items"),
                         ({**base, "hidden": [2**40]}, "item 0 must be <=")):
        with pytest.raises(InvalidRequest, match=word) as raised:
            mlp.resolve_kwargs(kwargs)
        assert raised.value.loc[:2] == ("spec", "arch_kwargs")


def test_unknown_architecture_names_the_field_and_the_known_ones():
    with pytest.raises(UnknownArchitecture) as info:
        build_model(_spec("resnet19"))
    assert info.value.loc == ("spec", "arch")
    assert "resnet19" in str(info.value) and "resnet18" in str(info.value)
    assert info.value.code == "unknown_architecture"


@pytest.mark.parametrize(
    ("arch", "kwargs", "key", "fragment"),
    [
        ("tinynet", {"num_clases": 10}, "num_clases", "unknown argument"),
        ("tinynet", {"num_classes": "10"}, "num_classes", "must be an integer, got string"),
        ("tinynet", {"num_classes": True}, "num_classes", "must be an integer, got boolean"),
        ("tinynet", {"num_classes": 2.5}, "num_classes", "must be an integer, got number"),
        ("tinynet", {"input_size": 0}, "input_size", "must be >= 1"),
        ("resnet18", {"small_input": 1}, "small_input", "must be a boolean"),
        ("mlp", {"in_features": 4, "hidden": [3, "x"], "num_classes": 2}, "hidden",
         "item 1 must be an integer"),
        ("mlp", {"in_features": 4, "hidden": 3, "num_classes": 2}, "hidden", "must be a list"),
        ("mlp", {"in_features": 4, "num_classes": 2}, "hidden", "needs argument 'hidden'"),
        ("linear", {"num_classes": 2}, "in_features", "needs argument 'in_features'"),
    ],
)
def test_bad_arch_kwargs_name_the_key(arch, kwargs, key, fragment):
    with pytest.raises(InvalidRequest) as info:
        build_model(_spec(arch, **kwargs))
    assert info.value.loc == ("spec", "arch_kwargs", key)
    assert fragment in str(info.value)


def test_absurd_sizes_are_refused_before_allocation():
    with pytest.raises(InvalidRequest) as info:
        build_model(_spec("linear", in_features=10**9, num_classes=10**3))
    assert "more than the limit" in str(info.value)
    assert info.value.loc == ("spec", "arch_kwargs")
    with pytest.raises(InvalidRequest):
        build_model(_spec("tinynet"), max_parameters=398_089)
    assert sum(p.numel() for p in build_model(_spec("tinynet"), max_parameters=398_090)
               .parameters()) == 398_090


# --- entry-point plugins: a real distribution on sys.path ----------------------------------

PLUGIN_MODULE = '''
from torch import nn
from gif.registry import ArchArgument, Architecture


def wide_builder(width: int = 4, num_classes: int = 3, tag: str = "x", act=nn.ReLU):
    """Two linear layers for tests."""
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, num_classes))


def wide_factory():
    return wide_builder


def picky_builder(width: int = 4):
    if width % 2:
        raise KeyError("width must be even")
    return nn.Linear(width, 2)


def picky():
    return picky_builder


def described():
    return Architecture(
        name="whatever",
        description="an Architecture from a factory",
        builder=lambda features=2: nn.Linear(features, 2),
        arguments=(ArchArgument("features", "int", 2, minimum=1),),
        flat_input=True,
        shape_of=lambda kw: (kw["features"],),
    )


def shadow():
    return wide_builder


def broken():
    raise ImportError("needs a package that is not installed")
'''


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    (tmp_path / "gif_test_plugin_mod.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "gif_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gif-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        widenet = gif_test_plugin_mod:wide_factory
        described = gif_test_plugin_mod:described
        linear = gif_test_plugin_mod:shadow
        brokennet = gif_test_plugin_mod:broken
        picky = gif_test_plugin_mod:picky
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugins_are_listed_and_buildable(plugin_dist):
    names = [a.name for a in list_architectures()]
    assert "widenet" in names and "described" in names
    assert "brokennet" not in names
    assert names.count("linear") == 1

    wide = get_architecture("widenet")
    args = {a.name: a.to_dict() for a in wide.arguments}
    assert args["width"] == {"name": "width", "type": "int", "required": False, "default": 4,
                             "maximum": 2**31 - 1}
    assert args["tag"]["type"] == "str"
    assert args["act"] == {"name": "act", "type": "any", "required": False,
                           "default": repr(nn.ReLU)}  # JSON-safe listing of any default
    assert wide.description == "Two linear layers for tests."
    model = build_model(_spec("widenet", width=6))
    assert model[0].weight.shape == (6, 2)
    with pytest.raises(InvalidRequest) as info:
        build_model(_spec("widenet", width="6"))
    assert info.value.loc == ("spec", "arch_kwargs", "width")

    with pytest.raises(InvalidRequest) as info:
        build_model(_spec("picky", width=3))
    assert "KeyError: 'width must be even'" in str(info.value)
    assert info.value.loc == ("spec", "arch_kwargs")

    described = get_architecture("described")
    assert described.name == "described"  # the entry-point name wins
    assert described.flat_input and described.input_shape({"features": 5}) == (5,)
    assert build_model(_spec("described", features=5)).weight.shape == (2, 5)


def test_plugins_cannot_replace_builtins_and_broken_ones_are_reported(plugin_dist):
    assert isinstance(build_model(_spec("linear", in_features=3, num_classes=2)), nn.Linear)
    errors = plugin_errors()
    assert set(errors) == {"brokennet"}
    assert "needs a package that is not installed" in errors["brokennet"]
    with pytest.raises(UnknownArchitecture) as info:
        get_architecture("brokennet")
    assert "failed to load" in str(info.value)


def test_plugins_vanish_with_their_distribution():
    assert "widenet" not in [a.name for a in list_architectures()]
    assert isinstance(get_architecture("tinynet"), Architecture)

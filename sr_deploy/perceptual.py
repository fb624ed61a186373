"""ImageNet feature networks from real weight files, and LPIPS v0.1 built on them.

Two uses, one set of weights:

- **Perceptual losses** (SRGAN's VGG content loss, ESRGAN's pre-activation variant):
  `FeatureExtractor` runs VGG16 / VGG19 on RGB in [0, 1] with torchvision's ImageNet
  normalisation and returns the feature maps of the named layers (``conv5_3`` = before
  activation, ``relu5_3`` = after).
- **LPIPS** (Zhang et al. 2018, v0.1 linear heads): `LPIPS` compares two RGB images in [0, 1]
  (mapped to [-1, 1] inside, as the reference implementation expects) with AlexNet (the
  default, ``lpips``) or VGG16 (``lpips-vgg``) features.

Weights never come from the network. They are found, in this order, at an explicit path, in the
folder named by ``$SR_DEPLOY_PERCEPTUAL_WEIGHTS``, in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, where torchvision keeps ``vgg16-397923af.pth``), in
``~/.cache/sr_deploy/perceptual`` and in the development data folder
``../shared/data/weights/perceptual`` (relative to the working directory). Two layouts load:

- the ``.npz`` files ``lpips_vgg16_imagenet.npz`` / ``lpips_alexnet_imagenet.npz`` (flax HWIO
  kernels ``VGG16_0/Conv_k/kernel`` plus the LPIPS heads ``NetLinLayer_k/Conv_0/kernel``);
- torchvision's state-dict files (``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``,
  ``alexnet-owt-7be5be79.pth``) for the backbones; LPIPS heads then come from the ``lpips``
  package's ``weights/v0.1/{alex,vgg}.pth`` when it is installed.

Every file is identified by its sha256 (`identify_weights`): a perceptual loss refuses a file that
is not a known ImageNet release unless the caller allows it explicitly (tests with random
weights), so that no "SRGAN" is ever trained on a random VGG by accident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .util.files import file_sha256

ENV_VAR = "SR_DEPLOY_PERCEPTUAL_WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS v0.1 ScalingLayer: applied to RGB in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# Channels per conv, "M" = 2x2 max pooling (torchvision's configurations "D" and "E").
_VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# torchvision's alexnet().features: (out channels, kernel, stride, padding), pools after conv 1, 2, 5.
_ALEX_CONVS = [(64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
# The layers LPIPS v0.1 compares.
LPIPS_LAYERS = {
    "alexnet": ["relu1", "relu2", "relu3", "relu4", "relu5"],
    "vgg16": ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"],
}


@dataclass(frozen=True)
class KnownWeights:
    """A weight file this module knows: its backbone, layout and where it comes from."""

    arch: str  # vgg16 | vgg19 | alexnet
    layout: str  # npz | torchvision
    has_lpips_heads: bool
    origin: str


# sha256 of the files this module accepts without `allow_unknown`. The torchvision files carry the
# first 8 hex digits of their sha256 in their names; the full digests are matched by prefix.
KNOWN_SHA256 = {
    "bdaa2d38b2a24dcc182158c21c7759529b387322c2bfbc7ae66a1ad75a4ce01f": KnownWeights(
        "vgg16", "npz", True, "lpips_vgg16_imagenet.npz (torchvision vgg16-397923af + LPIPS v0.1 vgg heads)"
    ),
    "6faf059eae0b7101c34eef0b4866518550ae74bc1d9743d4f75653d04f262716": KnownWeights(
        "alexnet", "npz", True, "lpips_alexnet_imagenet.npz (torchvision alexnet-owt-7be5be79 + LPIPS v0.1 alex heads)"
    ),
}
KNOWN_SHA256_PREFIXES = {
    "397923af": KnownWeights("vgg16", "torchvision", False, "torchvision vgg16-397923af.pth"),
    "dcbb9e9d": KnownWeights("vgg19", "torchvision", False, "torchvision vgg19-dcbb9e9d.pth"),
    "7be5be79": KnownWeights("alexnet", "torchvision", False, "torchvision alexnet-owt-7be5be79.pth"),
}
# File names looked for in each search folder, best first.
FILE_NAMES = {
    "vgg16": ["lpips_vgg16_imagenet.npz", "vgg16-397923af.pth"],
    "vgg19": ["vgg19-dcbb9e9d.pth"],
    "alexnet": ["lpips_alexnet_imagenet.npz", "alexnet-owt-7be5be79.pth"],
}


def identify_weights(sha256: str) -> KnownWeights | None:
    """The known release with this sha256, or None for an unknown file."""
    if sha256 in KNOWN_SHA256:
        return KNOWN_SHA256[sha256]
    return KNOWN_SHA256_PREFIXES.get(sha256[:8])


def search_folders() -> list[Path]:
    """Where weights are looked for when no path is given, in order."""
    folders = []
    if os.environ.get(ENV_VAR):
        folders.append(Path(os.environ[ENV_VAR]))
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    folders.append(Path.home() / ".cache" / "sr_deploy" / "perceptual")
    folders.append(Path.cwd().parent / "shared" / "data" / "weights" / "perceptual")
    return folders


def find_weights(arch: str, path: str | Path | None = None) -> Path:
    """The weight file of `arch` (vgg16, vgg19, alexnet): `path` itself when it is a file, a
    known file name inside `path` when it is a folder, else the first hit in `search_folders()`.
    Raises InputError (one line) naming where it looked."""
    if arch not in FILE_NAMES:
        raise InputError(f"feature network {arch!r}: expected one of {', '.join(FILE_NAMES)}")
    names = FILE_NAMES[arch]
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if p.is_dir():
            for name in names:
                if (p / name).is_file():
                    return p / name
            raise InputError(f"{p}: no {arch} weights in this folder (looked for {', '.join(names)})")
        raise InputError(f"{p}: no such {arch} weights file")
    folders = search_folders()
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise InputError(
        f"{arch} ImageNet weights not found (looked for {', '.join(names)} in {', '.join(map(str, folders))}); "
        f"pass the file's path or set ${ENV_VAR} to its folder"
    )


# --------------------------------------------------------------------------------------------
# Reading weight files into torchvision-style `features` state dicts
# --------------------------------------------------------------------------------------------
def _conv_indices(arch: str) -> list[int]:
    """Indices of the Conv2d layers in torchvision's `features` Sequential of `arch`."""
    if arch == "alexnet":
        return [0, 3, 6, 8, 10]
    indices, index = [], 0
    for item in _VGG_CFG[arch]:
        if item == "M":
            index += 1
        else:
            indices.append(index)
            index += 2
    return indices


def _read_npz(path: Path, arch: str) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(features state dict in torchvision naming, LPIPS head weights (1, C, 1, 1)) from the npz."""
    prefix = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}.get(arch)
    if prefix is None:
        raise InputError(f"{path}: the npz layout holds VGG16 or AlexNet, not {arch}")
    try:
        data = np.load(path, allow_pickle=False)
        files = set(data.files)
    except Exception as exc:  # zipfile / numpy errors: the file is not a readable npz
        raise InputError(f"{path}: not a readable .npz weights file ({type(exc).__name__})") from exc
    state = {}
    for k, index in enumerate(_conv_indices(arch)):
        kernel, bias = f"{prefix}/Conv_{k}/kernel", f"{prefix}/Conv_{k}/bias"
        if kernel not in files or bias not in files:
            raise InputError(f"{path}: not {arch} weights in the npz layout (no {kernel})")
        state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(data[kernel].transpose(3, 2, 0, 1)))
        state[f"{index}.bias"] = torch.from_numpy(np.asarray(data[bias]))
    heads = []
    for k in range(5):
        key = f"NetLinLayer_{k}/Conv_0/kernel"
        if key in files:
            heads.append(torch.from_numpy(np.ascontiguousarray(data[key].transpose(3, 2, 0, 1))))
    return state, heads


def _read_torchvision(path: Path, arch: str) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision state-dict file, keys without the prefix."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a readable {arch} state-dict file ({first[:120]})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a {arch} state dict, found a {type(obj).__name__}")
    return {k[len("features.") :]: v.float() for k, v in obj.items() if k.startswith("features.")}


def _lpips_package_heads(arch: str) -> list[torch.Tensor]:
    """LPIPS v0.1 heads from an installed `lpips` package, or [] when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return []
    name = {"alexnet": "alex", "vgg16": "vgg"}[arch]
    path = Path(spec.origin).parent / "weights" / "v0.1" / f"{name}.pth"
    if not path.is_file():
        return []
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [state[f"lin{k}.model.1.weight"].float() for k in range(5)]


@dataclass
class LoadedWeights:
    """Backbone weights (torchvision `features` naming), LPIPS heads ([] when absent) and where
    they came from (path, sha256, the known release or None)."""

    arch: str
    features: dict[str, torch.Tensor]
    lpips_heads: list[torch.Tensor]
    path: Path
    sha256: str
    known: KnownWeights | None

    def describe(self) -> dict[str, str]:
        """What a checkpoint records about its feature network."""
        return {
            "arch": self.arch,
            "file": self.path.name,
            "sha256": self.sha256,
            "release": self.known.origin if self.known else "unknown",
        }


def load_weights(arch: str, path: str | Path | None = None, *, allow_unknown: bool = False) -> LoadedWeights:
    """Find (`find_weights`), identify and read the weights of `arch`. A file whose sha256 is not
    a known ImageNet release is refused (InputError naming the file) unless `allow_unknown`."""
    file = find_weights(arch, path)
    sha = file_sha256(file)
    known = identify_weights(sha)
    if known is None and not allow_unknown:
        raise InputError(
            f"{file}: not a known ImageNet {arch} weights file (sha256 {sha[:16]}...); a perceptual "
            "loss on unknown (e.g. random) weights is refused; pass the allow-unknown option only for tests"
        )
    if known is not None and known.arch != arch:
        raise InputError(f"{file}: holds {known.arch} weights, not {arch}")
    if file.suffix == ".npz":
        features, heads = _read_npz(file, arch)
    else:
        features, heads = _read_torchvision(file, arch), []
        if arch in LPIPS_LAYERS:
            heads = _lpips_package_heads(arch)
    return LoadedWeights(arch, features, heads, file, sha, known)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------
def _build_features(arch: str) -> tuple[nn.Sequential, dict[str, int]]:
    """torchvision's `features` Sequential for `arch` (random init) and layer name -> index
    (``conv3_3``, ``relu3_3`` for VGG; ``conv1``..``relu5`` for AlexNet)."""
    layers: list[nn.Module] = []
    names: dict[str, int] = {}
    if arch == "alexnet":
        cin = 3
        for k, (cout, kernel, stride, pad) in enumerate(_ALEX_CONVS, start=1):
            names[f"conv{k}"], names[f"relu{k}"] = len(layers), len(layers) + 1
            layers += [nn.Conv2d(cin, cout, kernel, stride, pad), nn.ReLU(inplace=False)]
            if k in (1, 2, 5):
                layers.append(nn.MaxPool2d(3, 2))
            cin = cout
        return nn.Sequential(*layers), names
    if arch not in _VGG_CFG:
        raise InputError(f"feature network {arch!r}: expected vgg16, vgg19 or alexnet")
    block, conv, cin = 1, 1, 3
    for item in _VGG_CFG[arch]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"], names[f"relu{block}_{conv}"] = len(layers), len(layers) + 1
            layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            cin, conv = int(item), conv + 1
    return nn.Sequential(*layers), names


class FeatureExtractor(nn.Module):
    """A frozen ImageNet backbone that returns the feature maps of `layers`.

    Input: (N, 3, H, W) RGB float. With ``imagenet_input=True`` (perceptual losses) the input is
    in [0, 1] and torchvision's ImageNet normalisation is applied inside; with False the caller
    normalises (LPIPS). Output: one tensor per name in `layers`, in that order.
    The network is cut after the deepest layer asked for, and stays in eval mode.
    """

    def __init__(self, arch: str, layers: list[str], *, imagenet_input: bool = True) -> None:
        super().__init__()
        features, names = _build_features(arch)
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise InputError(
                f"{arch} layer(s) {', '.join(unknown)}: expected names like "
                f"{'conv5_3 or relu5_3' if arch != 'alexnet' else 'conv5 or relu5'}"
            )
        self.arch = arch
        self.layers = list(layers)
        self._indices = [names[name] for name in layers]
        self.features = features[: max(self._indices) + 1]
        self.imagenet_input = imagenet_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:  # always eval: a fixed feature extractor
        return super().train(False)

    def load_features(self, state: dict[str, torch.Tensor], source: str) -> FeatureExtractor:
        """Load torchvision-named `features` tensors (extra deeper layers are ignored)."""
        wanted = self.features.state_dict()
        mine = {}
        for key, ref in wanted.items():
            value = state.get(key)
            if value is None or tuple(value.shape) != tuple(ref.shape):
                got = None if value is None else tuple(value.shape)
                raise InputError(
                    f"{source}: not {self.arch} weights (features.{key}: expected {tuple(ref.shape)}, found {got})"
                )
            mine[key] = value.float()
        self.features.load_state_dict(mine)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.imagenet_input:
            x = (x - self.mean) / self.std
        by_index: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            by_index[index] = x
        return [by_index[i] for i in self._indices]


def feature_extractor(
    arch: str, layers: list[str], weights: str | Path | None = None, *, allow_unknown: bool = False
) -> tuple[FeatureExtractor, LoadedWeights]:
    """A frozen `FeatureExtractor` of `arch` with ImageNet weights (see `load_weights`)."""
    loaded = load_weights(arch, weights, allow_unknown=allow_unknown)
    net = FeatureExtractor(arch, layers).load_features(loaded.features, str(loaded.path))
    return net, loaded


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two RGB images in [0, 1], (N, 3, H, W) float -> (N,) float.

    As the reference implementation: inputs mapped to [-1, 1], ScalingLayer, features after each
    ReLU of the backbone, unit-normalised over channels (eps 1e-10), squared difference, 1x1
    linear head without bias, spatial mean, summed over the five layers.
    """

    def __init__(self, net: str = "alex", weights: str | Path | None = None) -> None:
        super().__init__()
        arch = {"alex": "alexnet", "vgg": "vgg16"}.get(net)
        if arch is None:
            raise InputError(f"LPIPS network {net!r}: expected alex or vgg")
        loaded = load_weights(arch, weights)
        if len(loaded.lpips_heads) != 5:
            raise InputError(
                f"{loaded.path}: no LPIPS v0.1 heads for {arch} (use lpips_{arch}_imagenet.npz, or install "
                "the lpips package beside torchvision's file)"
            )
        self.source = loaded
        self.net = FeatureExtractor(arch, LPIPS_LAYERS[arch], imagenet_input=False)
        self.net.load_features(loaded.features, str(loaded.path))
        self.heads = nn.ParameterList([nn.Parameter(h, requires_grad=False) for h in loaded.lpips_heads])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.net(((a * 2 - 1) - self.shift) / self.scale)
        fb = self.net(((b * 2 - 1) - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
        for x, y, head in zip(fa, fb, self.heads):
            x = x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10)
            y = y / (torch.sqrt(torch.sum(y * y, dim=1, keepdim=True)) + 1e-10)
            total = total + F.conv2d((x - y) ** 2, head).mean(dim=(1, 2, 3))
        return total


def lpips_uint8(metric: LPIPS, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS between two uint8 (H, W, 3) RGB images (or (H, W) grey, replicated to RGB)."""

    def to_tensor(img: np.ndarray) -> torch.Tensor:
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)[None]

    with torch.inference_mode():
        return float(metric(to_tensor(a), to_tensor(b))[0])

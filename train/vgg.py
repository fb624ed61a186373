"""VGG19 feature extractor for perceptual losses, loading torchvision's ImageNet weights file.

The weights cannot be downloaded at run time here: pass the standard torchvision file
`vgg19-dcbb9e9d.pth` with ``--vgg-weights PATH`` or put it in the torch hub cache
(``$TORCH_HOME/hub/checkpoints/``, by default ``~/.cache/torch/hub/checkpoints/``).
The layers are numbered as torchvision's ``vgg19().features`` so its state dict loads unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sr_deploy.errors import InputError

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision's configuration "E": channels per conv, "M" for 2x2 max pooling.
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_indices() -> dict[str, int]:
    """Name -> index in `features` of each conv ("conv5_4") and its ReLU ("relu5_4")."""
    names: dict[str, int] = {}
    block, conv, index = 1, 1, 0
    for item in _VGG19_CFG:
        if item == "M":
            block, conv = block + 1, 1
            index += 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            conv += 1
            index += 2
    return names


LAYERS = _layer_indices()


def default_weights_path() -> Path:
    """Where torchvision would have cached the file: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def find_vgg_weights(path: str | Path | None) -> Path:
    """`path` if given and present, else the hub cache copy; InputError (one line) otherwise."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such VGG19 weights file (torchvision's {VGG19_FILE}, from {VGG19_URL})")
        return p
    cached = default_weights_path()
    if not cached.is_file():
        raise InputError(
            f"{cached}: VGG19 weights not found; the perceptual loss needs torchvision's {VGG19_FILE} "
            f"({VGG19_URL}): pass --vgg-weights PATH or copy it to {cached.parent}/"
        )
    return cached


class VGG19Features(nn.Module):
    """torchvision's VGG19 `features`, truncated after `layer` ("conv5_4" = before activation,
    "relu5_4" = after). Input: RGB float in [0, 1], NCHW; ImageNet normalisation is applied
    inside. Output: the feature map at `layer`. Parameters are frozen; the module stays in eval
    mode (it has no BN or dropout, so this only documents intent)."""

    def __init__(self, layer: str = "relu5_4") -> None:
        super().__init__()
        if layer not in LAYERS:
            raise InputError(f"VGG19 layer {layer!r}: expected convB_C or reluB_C, e.g. conv5_4 or relu2_2")
        last = LAYERS[layer]
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG19_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = int(item)
        self.features = nn.Sequential(*layers[: last + 1])
        self.layer = layer
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:  # always eval: a fixed feature extractor
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def load_torchvision_weights(self, path: str | Path) -> VGG19Features:
        """Load `features.*` from a torchvision VGG19 state-dict file (the classifier is ignored)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path}: not a readable VGG19 state-dict file ({cause[:120]})") from exc
        if not isinstance(state, dict):
            raise InputError(f"{path}: expected a VGG19 state dict, found a {type(state).__name__}")
        wanted = self.features.state_dict()
        mine = {}
        for key, ref in wanted.items():
            value = state.get(f"features.{key}")
            if value is None or tuple(value.shape) != tuple(ref.shape):
                got = None if value is None else tuple(value.shape)
                raise InputError(
                    f"{path}: not torchvision's VGG19 weights (features.{key}: expected {tuple(ref.shape)}, found {got})"
                )
            mine[key] = value.float()
        self.features.load_state_dict(mine)
        return self


def load_vgg19(layer: str, weights: str | Path | None) -> VGG19Features:
    """A frozen VGG19 truncated at `layer` with ImageNet weights from `weights` or the hub cache."""
    return VGG19Features(layer).load_torchvision_weights(find_vgg_weights(weights))

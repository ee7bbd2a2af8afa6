"""Model cards: everything needed to build a generator or detector, as a small JSON document.

The official AudioSeal cards are reproduced here (same hyper-parameters as the reference's
YAML cards) so that official checkpoints can be built without their YAML or omegaconf.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from audioseal_live.blocks.conv import PAD_MODES
from audioseal_live.models.message_code import TemplateCode

# Activations a card may name. A closed list, so that a checkpoint's config cannot make us
# instantiate arbitrary torch.nn attributes.
ACTIVATIONS = ("ELU", "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "PReLU")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


HUB_REPO = "facebook/audioseal"


@dataclass
class SEANetCard:
    """Hyper-parameters shared by the SEANet encoder and decoder."""

    channels: int = 1
    dimension: int = 128
    n_filters: int = 32
    n_residual_layers: int = 1
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    activation: str = "ELU"
    activation_params: dict[str, float] = field(default_factory=lambda: {"alpha": 1.0})
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    causal: bool = True
    pad_mode: str = "constant"
    true_skip: bool = True
    compress: int = 2
    lstm: int = 2
    disable_norm_outer_blocks: int = 0
    # Weight norm is a training-time parametrisation; loaded weights are always folded.
    norm: str = "weight_norm"

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


@dataclass
class ModelCard:
    """A generator or detector: architecture, message size, and where its weights come from."""

    name: str
    kind: Literal["generator", "detector"]
    nbits: int = 16
    sample_rate: int = 16000
    seanet: SEANetCard = field(default_factory=SEANetCard)
    # generator only: final activation of the decoder and how the causal convtr trims
    final_activation: str | None = None
    final_activation_params: dict[str, float] | None = None
    trim_right_ratio: float = 1.0
    # detector only: channels of the transposed convolution back to the sample rate
    output_dim: int = 32
    # detector only: the message is read at this many phases of the 20 ms frame grid (the
    # input delayed by k * hop / phases samples) and taken from the phase whose bits are most
    # confident. Our default's bits are only decodable near its generator's grid, which a
    # live chain or a file shifts arbitrarily; detection itself reads phase 0 at any shift.
    # Official cards: 1 (the reference's behaviour).
    sync_phases: int = 1
    # detector only: the message is a grid template code (models.message_code) read by its
    # own self-synchronising reader, not by the bit head; None for official cards.
    template_code: TemplateCode | None = None
    # where the weights live: a file name on the hub (official cards) or beside the card
    checkpoint: str | None = None
    description: str = ""

    @property
    def hop_length(self) -> int:
        return self.seanet.hop_length

    @property
    def streamable(self) -> bool:
        return not self.why_not_streamable()

    def why_not_streamable(self) -> str:
        """'' if chunk-by-chunk output can equal the whole-signal output, else why not."""
        if not self.seanet.causal:
            return "it is non-causal: its convolutions look ahead into future samples"
        if self.trim_right_ratio != 1.0:
            return (
                f"its transposed convolutions trim {1 - self.trim_right_ratio:g} of their "
                "overlap on the left, which a stream only learns about later"
            )
        if self.seanet.pad_mode == "reflect":
            return "it pads by reflecting the signal's start, which a first chunk cannot know"
        return ""

    def validate(self) -> ModelCard:
        s = self.seanet
        problems = []
        if self.kind not in ("generator", "detector"):
            problems.append(f"kind must be 'generator' or 'detector', not {self.kind!r}")
        if self.nbits < 0 or self.nbits > 64:
            problems.append(f"nbits must be in [0, 64], not {self.nbits}")
        if self.kind == "generator" and self.nbits == 0:
            pass  # zero-bit watermark: no message embedding
        if s.activation not in ACTIVATIONS:
            problems.append(f"activation {s.activation!r} is not one of {ACTIVATIONS}")
        if self.final_activation is not None and self.final_activation not in ACTIVATIONS:
            problems.append(f"final_activation {self.final_activation!r} is not allowed")
        if not s.ratios or any(not _is_int(r) or r < 1 for r in s.ratios):
            problems.append(f"ratios must be positive integers, not {s.ratios}")
        for name, least in (
            ("channels", 1),
            ("dimension", 1),
            ("n_filters", 1),
            ("kernel_size", 1),
            ("last_kernel_size", 1),
            ("residual_kernel_size", 1),
            ("compress", 1),
            ("dilation_base", 1),
            ("n_residual_layers", 0),
            ("lstm", 0),
            ("disable_norm_outer_blocks", 0),
        ):
            if not _is_int(getattr(s, name)) or getattr(s, name) < least:
                problems.append(f"seanet.{name} must be an integer >= {least}")
        for name in ("nbits", "sample_rate", "output_dim", "sync_phases"):
            if not _is_int(getattr(self, name)):
                problems.append(f"{name} must be an integer, not {getattr(self, name)!r}")
        if not isinstance(s.causal, bool) or not isinstance(s.true_skip, bool):
            problems.append("seanet.causal and seanet.true_skip must be true or false")
        if s.pad_mode not in PAD_MODES:
            problems.append(f"seanet.pad_mode {s.pad_mode!r} is not one of {PAD_MODES}")
        for what, params in (
            ("seanet.activation_params", s.activation_params),
            ("final_activation_params", self.final_activation_params or {}),
        ):
            if not isinstance(params, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) for k, v in params.items()
            ):
                problems.append(f"{what} must map names to numbers, not {params!r}")
        if not isinstance(self.trim_right_ratio, (int, float)) or not (
            0.0 <= self.trim_right_ratio <= 1.0
        ):
            problems.append(f"trim_right_ratio must lie in [0, 1], not {self.trim_right_ratio}")
        if problems:  # the checks below assume the numbers above are sound
            raise ValueError(f"invalid model card {self.name!r}: " + "; ".join(problems))
        if self.sync_phases < 1 or self.sync_phases > self.hop_length:
            problems.append(f"sync_phases must be in [1, hop], not {self.sync_phases}")
        if s.channels != 1:
            problems.append("only mono models (seanet.channels == 1) are supported")
        code = self.template_code
        if code is not None:
            numbers = all(isinstance(v, (int, float)) for v in (code.lo_hz, code.hi_hz))
            if not isinstance(code.seed, int) or not numbers:
                problems.append("template_code needs an integer seed and numbers lo_hz, hi_hz")
            elif not 0 <= code.lo_hz < code.hi_hz <= self.sample_rate / 2:
                problems.append(f"template_code band must lie within 0..{self.sample_rate / 2} Hz")
        if problems:
            raise ValueError(f"invalid model card {self.name!r}: " + "; ".join(problems))
        return self

    # --- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        seanet = data.pop("seanet", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model card fields: {sorted(unknown)}")
        seanet_known = {f.name for f in dataclasses.fields(SEANetCard)}
        seanet = {k: v for k, v in seanet.items() if k in seanet_known}
        seanet["ratios"] = [int(r) for r in seanet.get("ratios", [8, 5, 4, 2])]
        code = data.pop("template_code", None)
        if code is not None:
            code_known = {f.name for f in dataclasses.fields(TemplateCode)}
            if not isinstance(code, dict) or set(code) - code_known:
                raise ValueError(f"template_code must be an object with fields {code_known}")
            code = TemplateCode(**code)
        return cls(seanet=SEANetCard(**seanet), template_code=code, **data).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def _official(
    name: str, kind: Literal["generator", "detector"], causal: bool, ckpt: str
) -> ModelCard:
    return ModelCard(
        name=name,
        kind=kind,
        nbits=16,
        seanet=SEANetCard(causal=causal),
        checkpoint=ckpt,
        description=f"official AudioSeal {'streaming ' if causal else ''}{kind} (Meta)",
    )


OFFICIAL_CARDS: dict[str, ModelCard] = {
    "audioseal_wm_streaming": _official(
        "audioseal_wm_streaming", "generator", True, "generator_streaming.pth"
    ),
    "audioseal_detector_streaming": _official(
        "audioseal_detector_streaming", "detector", True, "detector_streaming.pth"
    ),
    "audioseal_wm_16bits": _official(
        "audioseal_wm_16bits", "generator", False, "generator_base.pth"
    ),
    "audioseal_detector_16bits": _official(
        "audioseal_detector_16bits", "detector", False, "detector_base.pth"
    ),
}

STREAMING_CARD_NAMES = ("audioseal_wm_streaming", "audioseal_detector_streaming")


def small_card(
    kind: Literal["generator", "detector"], name: str | None = None, **seanet: Any
) -> ModelCard:
    """A CPU-real-time card: the official architecture with smaller widths."""
    params: dict[str, Any] = {"n_filters": 16, "dimension": 64, "lstm": 1}
    params.update(seanet)
    return ModelCard(
        name=name or f"small_{kind}",
        kind=kind,
        seanet=SEANetCard(**params),
        description="audioseal-live CPU real-time card",
    ).validate()

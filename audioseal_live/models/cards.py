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
from audioseal_live.errors import AudioSealLiveError
from audioseal_live.models.message_code import TemplateCode

# Activations a card may name. A closed list, so that a checkpoint's config cannot make us
# instantiate arbitrary torch.nn attributes.
ACTIVATIONS = ("ELU", "ReLU", "LeakyReLU", "GELU", "SiLU", "Tanh", "PReLU")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


HUB_REPO = "facebook/audioseal"

# Sizes a card may ask for, inclusive: well above the official cards' (in the comments) and
# far below what would allocate gigabytes, so that a tampered card is an error, not a crash.
SEANET_LIMITS: dict[str, tuple[int, int]] = {
    "channels": (1, 1),  # 1: mono only
    "dimension": (1, 2048),  # 128
    "n_filters": (1, 512),  # 32
    "n_residual_layers": (0, 4),  # 1
    "kernel_size": (1, 63),  # 7
    "last_kernel_size": (1, 63),  # 7
    "residual_kernel_size": (1, 15),  # 3
    "dilation_base": (1, 4),  # 2
    "compress": (1, 16),  # 2
    "lstm": (0, 4),  # 2
    "disable_norm_outer_blocks": (0, 8),  # 0
}
MAX_RATIOS = 8  # official: 4 ratios (8, 5, 4, 2)
MAX_RATIO = 32
MAX_HOP = 8192  # official: 320 samples
MAX_SAMPLE_RATE = 384_000  # official: 16000
MAX_OUTPUT_DIM = 1024  # official: 32
# The weights a card may describe: official generator ~14.7 M, detector ~8.6 M.
MAX_PARAMETERS = 200_000_000


class CardError(AudioSealLiveError, ValueError):
    """A card that describes no model; ``problems`` are "field: what is wrong" lines. The user's
    to fix (a hand-edited card, a training option that makes none): one line in the CLI."""

    def __init__(self, name: object, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid model card {name!r}: " + "; ".join(problems))


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
            problems.append(f"kind: must be 'generator' or 'detector', not {self.kind!r}")
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name}: must be a string, not {getattr(self, name)!r}")
        if self.checkpoint is not None and (
            not isinstance(self.checkpoint, str) or not self.checkpoint
        ):
            problems.append(f"checkpoint: must be a file name, not {self.checkpoint!r}")
        for name, (low, high) in (
            ("nbits", (0, 64)),
            ("sample_rate", (1, MAX_SAMPLE_RATE)),
            ("output_dim", (1, MAX_OUTPUT_DIM)),
            ("sync_phases", (1, MAX_HOP)),
        ):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= high:
                problems.append(f"{name}: must be an integer in [{low}, {high}], not {value!r}")
        if s.activation not in ACTIVATIONS:
            problems.append(f"seanet.activation: {s.activation!r} is not one of {ACTIVATIONS}")
        if self.final_activation is not None and self.final_activation not in ACTIVATIONS:
            problems.append(
                f"final_activation: {self.final_activation!r} is not null nor one of {ACTIVATIONS}"
            )
        if (
            not isinstance(s.ratios, list)
            or not 1 <= len(s.ratios) <= MAX_RATIOS
            or any(not _is_int(r) or not 1 <= r <= MAX_RATIO for r in s.ratios)
        ):
            problems.append(
                f"seanet.ratios: must be a list of 1 to {MAX_RATIOS} integers in "
                f"[1, {MAX_RATIO}], not {s.ratios!r}"
            )
        elif s.hop_length > MAX_HOP:
            problems.append(
                f"seanet.ratios: their product (the hop) must be at most {MAX_HOP}, "
                f"not {s.hop_length}"
            )
        for name, (low, high) in SEANET_LIMITS.items():
            value = getattr(s, name)
            if not _is_int(value) or not low <= value <= high:
                problems.append(
                    f"seanet.{name}: must be an integer in [{low}, {high}], not {value!r}"
                )
        for name in ("causal", "true_skip"):
            if not isinstance(getattr(s, name), bool):
                problems.append(f"seanet.{name}: must be true or false, not {getattr(s, name)!r}")
        if not isinstance(s.pad_mode, str) or s.pad_mode not in PAD_MODES:
            problems.append(f"seanet.pad_mode: {s.pad_mode!r} is not one of {PAD_MODES}")
        for what, params in (
            ("seanet.activation_params", s.activation_params),
            ("final_activation_params", self.final_activation_params or {}),
        ):
            if not isinstance(params, dict) or not all(
                isinstance(k, str) and _is_number(v) for k, v in params.items()
            ):
                problems.append(f"{what}: must map names to finite numbers, not {params!r}")
        if not _is_number(self.trim_right_ratio) or not 0.0 <= self.trim_right_ratio <= 1.0:
            problems.append(
                f"trim_right_ratio: must be a number in [0, 1], not {self.trim_right_ratio!r}"
            )
        if problems:  # the checks below assume the numbers above are sound
            raise CardError(self.name, problems)
        if self.sync_phases > self.hop_length:
            problems.append(
                f"sync_phases: must be in [1, hop={self.hop_length}], not {self.sync_phases}"
            )
        code = self.template_code
        if code is not None:
            numbers = all(_is_number(v) for v in (code.lo_hz, code.hi_hz))
            if not _is_int(code.seed) or not numbers:
                problems.append("template_code needs an integer seed and numbers lo_hz, hi_hz")
            elif not 0 <= code.lo_hz < code.hi_hz <= self.sample_rate / 2:
                problems.append(f"template_code band must lie within 0..{self.sample_rate / 2} Hz")
        size = self.parameter_count()
        if size > MAX_PARAMETERS:
            problems.append(
                f"seanet: its sizes describe a model of {size / 1e6:.0f} M parameters, more "
                f"than the {MAX_PARAMETERS / 1e6:.0f} M allowed"
            )
        if problems:
            raise CardError(self.name, problems)
        return self

    def parameter_count(self) -> int:
        """The weights this card's model has (computed from the sizes, nothing allocated)."""
        s = self.seanet

        def conv(cin: int, cout: int, k: int) -> int:
            return cin * cout * k + cout

        def resnet(w: int) -> int:
            hidden = w // s.compress
            block = conv(w, hidden, s.residual_kernel_size) + conv(hidden, w, 1)
            return s.n_residual_layers * (block + (0 if s.true_skip else conv(w, w, 1)))

        widest = s.n_filters * 2 ** len(s.ratios)
        lstm = s.lstm * 4 * (2 * widest * widest + 2 * widest)
        encoder = conv(s.channels, s.n_filters, s.kernel_size) + lstm
        encoder += conv(widest, s.dimension, s.last_kernel_size)
        for i, ratio in enumerate(reversed(s.ratios)):
            w = s.n_filters * 2**i
            encoder += resnet(w) + conv(w, 2 * w, 2 * ratio)
        if self.kind == "detector":
            head = conv(s.dimension, self.output_dim, self.hop_length)
            return encoder + head + conv(self.output_dim, 2 + self.nbits, 1)
        decoder = conv(s.dimension, widest, s.kernel_size) + lstm
        decoder += conv(s.n_filters, s.channels, s.last_kernel_size)
        for i, ratio in enumerate(s.ratios):
            w = widest // 2**i
            decoder += conv(w, w // 2, 2 * ratio) + resnet(w // 2)
        return encoder + decoder + 2 * self.nbits * s.dimension

    # --- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """A card from its JSON object; CardError says which field is wrong and how."""
        if not isinstance(data, dict):
            raise CardError(None, [f"must be a JSON object, not {type(data).__name__}"])
        data = dict(data)
        name = data.get("name")
        known = {f.name for f in dataclasses.fields(cls)}
        problems = [f"{k}: not a model card field" for k in sorted(set(data) - known, key=str)]
        problems += [f"{k}: missing" for k in ("name", "kind") if k not in data]
        seanet = data.pop("seanet", None)
        if seanet is None:
            seanet = {}
        elif not isinstance(seanet, dict):
            problems.append(f"seanet: must be an object, not {type(seanet).__name__}")
            seanet = {}
        # Unknown seanet fields are left out: the reference's cards carry some (moshi, ...).
        seanet_known = {f.name for f in dataclasses.fields(SEANetCard)}
        seanet = {k: v for k, v in seanet.items() if k in seanet_known}
        code = data.pop("template_code", None)
        if code is not None:
            code_known = {f.name for f in dataclasses.fields(TemplateCode)}
            if not isinstance(code, dict) or set(code) - code_known:
                problems.append(f"template_code must be an object with fields {code_known}")
            else:
                code = TemplateCode(**code)
        if problems:
            raise CardError(name, problems)
        return cls(seanet=SEANetCard(**seanet), template_code=code, **data).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

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

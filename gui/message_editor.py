"""16-bit message editor: bit toggles, hex and decimal fields, a random button.

All three views edit one value. Typed hex goes live once it holds all 4 digits (or on Enter /
leaving the field, for a shorter one); decimal on Enter, leaving the box, or its arrows. Text that
does not parse to a 16-bit value flags the field and the last good message stays in force: the
engine never sees a half-typed message (overtyping BEEF would otherwise mark 000B, 00BE, 0BEE).
"""

from __future__ import annotations

import secrets

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from audioseal_live.errors import MessageError
from audioseal_live.message_bits import NBITS, bits_of, bits_to_int


def parse_hex(text: str, nbits: int = NBITS) -> int:
    """'1a2b', '0x1A2B', '1a 2b' -> int; MessageError with a one-line reason otherwise."""
    t = text.strip().lower().replace(" ", "").replace("_", "")
    if t.startswith("0x"):
        t = t[2:]
    if not t:
        raise MessageError("enter up to 4 hex digits, e.g. 1A2B")
    if t.strip("0123456789abcdef"):  # int(t, 16) would also take a sign: -1, +1a
        raise MessageError(f"{text.strip()!r} is not hex (digits 0-9 and A-F)")
    v = int(t, 16)
    if v >= 1 << nbits:
        raise MessageError(f"0x{v:X} does not fit in {nbits} bits (max 0x{(1 << nbits) - 1:X})")
    return v


class MessageEditor(QWidget):
    messageChanged = Signal(int)

    def __init__(self, value: int = 0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._value = -1
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(6)

        grid = QGridLayout()
        grid.setHorizontalSpacing(2)
        grid.setVerticalSpacing(2)
        self.bit_buttons: list[QToolButton] = []
        for i in range(NBITS):
            b = QToolButton(self)
            b.setObjectName("bitButton")
            b.setCheckable(True)
            b.setText("0")
            b.setToolTip(f"bit {i} (MSB first)")
            b.setAccessibleName(f"message bit {i}")
            b.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            b.setMinimumWidth(16)
            b.setFocusPolicy(Qt.FocusPolicy.TabFocus)
            b.toggled.connect(self._on_bit)
            # Groups of 4 (one hex digit each) with a small gap, so hex and bits line up.
            grid.addWidget(b, 0, i + i // 4)
            self.bit_buttons.append(b)
        for g in range(1, 4):
            grid.setColumnMinimumWidth(g * 5 - 1, 6)
        lay.addLayout(grid)

        row = QHBoxLayout()
        hex_label = QLabel("&Hex")
        row.addWidget(hex_label)
        self.hex_edit = QLineEdit(self)
        hex_label.setBuddy(self.hex_edit)
        self.hex_edit.setAccessibleName("message, hex")
        self.hex_edit.setMaxLength(8)
        self.hex_edit.setPlaceholderText("1A2B")
        self.hex_edit.setToolTip("message as hex, 0000 to FFFF (Enter applies)")
        self.hex_edit.setFixedWidth(80)
        self.hex_edit.textEdited.connect(self._on_hex_edited)
        self.hex_edit.editingFinished.connect(self._on_hex_done)
        row.addWidget(self.hex_edit)
        row.addSpacing(8)
        dec_label = QLabel("D&ec")
        row.addWidget(dec_label)
        self.dec_spin = QSpinBox(self)
        dec_label.setBuddy(self.dec_spin)
        self.dec_spin.setAccessibleName("message, decimal")
        self.dec_spin.setRange(0, (1 << NBITS) - 1)
        self.dec_spin.setToolTip("message as a decimal number, 0 to 65535 (Enter applies)")
        self.dec_spin.setKeyboardTracking(False)  # typed digits apply on Enter, not each key
        self.dec_spin.valueChanged.connect(self.set_value)
        row.addWidget(self.dec_spin)
        row.addStretch(1)
        self.random_button = QPushButton("Random", self)
        self.random_button.setToolTip("draw a random 16-bit message")
        # not by a click: taking the focus would apply a half-typed hex first (editingFinished)
        self.random_button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.random_button.clicked.connect(self.randomize)
        row.addWidget(self.random_button)
        lay.addLayout(row)

        self.error_label = QLabel("", self)
        self.error_label.setObjectName("errorLabel")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        lay.addWidget(self.error_label)
        self.set_value(value)

    # ----- value -------------------------------------------------------------------------
    def value(self) -> int:
        return self._value

    def bits(self) -> tuple[int, ...]:
        return bits_of(self._value)

    def set_value(self, value: int) -> None:
        value = int(value)
        if not 0 <= value < 1 << NBITS:
            raise MessageError(f"message {value} does not fit in {NBITS} bits")
        changed = value != self._value
        self._value = value
        self._sync_views()
        self._set_error("")
        if changed:
            self.messageChanged.emit(value)

    def randomize(self) -> None:
        self.set_value(secrets.randbits(NBITS))

    # ----- views -------------------------------------------------------------------------
    def _sync_views(self, hex_too: bool = True) -> None:
        """Show the value in the bit buttons, the decimal box and the hex field (but not in
        the hex field when the change came from typing there: ``hex_too=False``)."""
        for b, bit in zip(self.bit_buttons, self.bits(), strict=True):
            b.blockSignals(True)
            b.setChecked(bool(bit))
            b.setText(str(bit))
            b.blockSignals(False)
        if hex_too:  # a bit click leaves the focus in the hex field: update it all the same
            self.hex_edit.setText(f"{self._value:04X}")
            self._set_error("")
        self.dec_spin.blockSignals(True)
        self.dec_spin.setValue(self._value)
        self.dec_spin.blockSignals(False)

    def _on_bit(self, _checked: bool) -> None:
        self.set_value(bits_to_int([int(b.isChecked()) for b in self.bit_buttons]))

    def _on_hex_edited(self, text: str, complete: bool = False) -> None:
        """Each keystroke: flag text that cannot become a message; apply it once it holds all
        4 digits (``complete``: Enter or leaving the field applies a shorter one)."""
        try:
            v = parse_hex(text)
        except MessageError as exc:
            self._set_error(str(exc))
            return
        self._set_error("")
        digits = len(text.strip().lower().removeprefix("0x").replace(" ", "").replace("_", ""))
        if v != self._value and (complete or digits == NBITS // 4):
            self._value = v
            self._sync_views(hex_too=False)
            self.messageChanged.emit(v)

    def _on_hex_done(self) -> None:
        # Enter or leaving the field: apply what parses; bad text keeps its error on show
        # and the last good message in force.
        self._on_hex_edited(self.hex_edit.text(), complete=True)
        if not self.hex_edit.property("invalid"):
            self.hex_edit.setText(f"{self._value:04X}")

    def apply_hex(self, text: str) -> bool:
        """Type ``text`` into the hex field and press Enter. True if it was accepted."""
        self.hex_edit.setText(text)
        self._on_hex_done()
        return not self.hex_error()

    def hex_error(self) -> str:
        return self.error_label.text() if self.hex_edit.property("invalid") else ""

    def _set_error(self, text: str) -> None:
        invalid = bool(text)
        self.hex_edit.setProperty("invalid", invalid)
        self.hex_edit.setStyleSheet("QLineEdit { border: 2px solid #d9534f; }" if invalid else "")
        self.error_label.setText(text)
        self.error_label.setVisible(invalid)

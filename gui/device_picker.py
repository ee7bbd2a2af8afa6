"""Device picker: a combo box of devices grouped under host-API headers (ALSA, JACK, WASAPI…).

Entries carry the device's name and host API; the window saves those, never the index. A saved
device that is not plugged in stays in the list, marked "not found", so the choice survives
until it comes back (and starting with it gives a clear message instead of a silent swap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audioseal_live_gui.settings import DeviceRef
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QComboBox, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from audioseal_live.engine.audio_io import DeviceInfo

ROLE_REF = Qt.ItemDataRole.UserRole + 1  # DeviceRef, or a special string ("output", "off")
ROLE_INDEX = Qt.ItemDataRole.UserRole + 2  # PortAudio index in the current listing, or -1


class _IndentDevices(QStyledItemDelegate):
    """In the open list, devices sit indented under their host API's bold heading; the
    closed box shows the bare name (an indent there cost three characters of it)."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: Any) -> None:  # noqa: N802
        super().initStyleOption(option, index)
        row = index.data(ROLE_INDEX)
        if row is not None and int(row) >= 0:
            option.text = "    " + option.text


class DevicePicker(QComboBox):
    """``kind``: "input" or "output". ``specials``: leading (label, key) entries, e.g. the
    monitor's "Marked output (digital)" and "Off"."""

    deviceChanged = Signal(object)  # the new selection (DeviceRef or special key)

    def __init__(
        self,
        kind: str,
        specials: Sequence[tuple[str, str]] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.kind = kind
        self.specials = tuple(specials)
        self._model = QStandardItemModel(self)
        self.setModel(self._model)
        self.setItemDelegate(_IndentDevices(self))
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(18)
        self._last: object = None
        self._base_tip = ""
        self.currentIndexChanged.connect(self._on_index)
        self.set_devices([])

    def setToolTip(self, text: str) -> None:  # noqa: N802 (Qt's name)
        """The box's own tooltip; the current device's full name is added below it (a long
        name, or its "not found" mark, is cut off in the closed box)."""
        self._base_tip = text
        self._update_tip()

    def _update_tip(self) -> None:
        row = self.currentIndex()
        item = self._model.item(row) if row >= 0 else None
        detail = (item.toolTip() or item.text().strip()) if item is not None else ""
        super().setToolTip("\n".join(t for t in (self._base_tip, detail) if t))

    # ----- filling -----------------------------------------------------------------------
    def set_devices(self, devices: Sequence[DeviceInfo], keep: object = None) -> None:
        """Rebuild the list from ``devices`` and select ``keep`` (or the current choice)."""
        want = keep if keep is not None else self.current()
        self.blockSignals(True)
        self._model.clear()
        for label, key in self.specials:
            self._add(label, key, -1)
        if self.kind != "monitor":
            self._add("System default", DeviceRef(), -1)
        chan = "max_output_channels" if self.kind == "output" else "max_input_channels"
        usable = [d for d in devices if getattr(d, chan) > 0]
        for api in dict.fromkeys(d.hostapi for d in usable):  # host APIs in PortAudio order
            self._header(api)
            for d in usable:
                if d.hostapi == api:
                    n = getattr(d, chan)
                    tip = f"{d.name} [{api}] · {n} ch · {d.default_samplerate:.0f} Hz"
                    self._add(d.name, DeviceRef(d.name, d.hostapi), d.index, tip)
        self.blockSignals(False)
        self.select(want if want is not None else DeviceRef())
        self._last = self.current()

    def _header(self, text: str) -> None:
        item = QStandardItem(text)
        item.setFlags(Qt.ItemFlag.NoItemFlags)  # a label, not a choice
        f = QFont(self.font())
        f.setBold(True)
        item.setFont(f)
        self._model.appendRow(item)

    def _add(self, label: str, ref: object, index: int, tip: str = "") -> None:
        item = QStandardItem(label)
        item.setData(ref, ROLE_REF)
        item.setData(index, ROLE_INDEX)
        if tip:
            item.setToolTip(tip)
        self._model.appendRow(item)

    # ----- selection ---------------------------------------------------------------------
    def current(self) -> object:
        return self.currentData(ROLE_REF)

    def shown_name(self) -> str:
        """The selection's name for messages (without the list's indent or marks)."""
        cur = self.current()
        if isinstance(cur, DeviceRef) and not cur.is_default:
            return cur.name
        return self.currentText().strip()

    def current_index(self) -> int | None:
        """PortAudio index of the selection in the listing it came from (None = default or
        a special entry)."""
        i = self.currentData(ROLE_INDEX)
        return int(i) if i is not None and int(i) >= 0 else None

    def _find(self, want: object) -> int:
        exact = -1
        by_name = -1
        for row in range(self._model.rowCount()):
            ref = self._model.item(row).data(ROLE_REF)
            if ref is None:
                continue
            if ref == want:
                exact = row
                break
            if (
                isinstance(ref, DeviceRef)
                and isinstance(want, DeviceRef)
                and ref.name == want.name
                and by_name < 0
            ):
                by_name = row  # same device under a renamed/other host API entry
        return exact if exact >= 0 else by_name

    def select(self, want: object) -> bool:
        """Select ``want``; a device that is not present is added, marked "not found"."""
        row = self._find(want)
        if row < 0 and isinstance(want, DeviceRef) and not want.is_default:
            api = f" [{want.hostapi}]" if want.hostapi else ""
            # the mark first: a long name would push it out of the closed box
            tip = f"{want.name}{api}: saved device, not found (not plugged in?)"
            self._add(f"(not found) {want.name}{api}", want, -1, tip)
            row = self._model.rowCount() - 1
        elif row < 0:
            row = 0
        self.blockSignals(True)
        self.setCurrentIndex(row)
        self.blockSignals(False)
        self._last = self.current()
        self._update_tip()
        return True

    def revert(self, previous: object) -> None:
        """Roll back to ``previous`` without emitting ``deviceChanged`` (failed switch)."""
        self.select(previous)

    def _on_index(self, _row: int) -> None:
        self._update_tip()
        cur = self.current()
        if cur is None:  # a header: cannot be chosen, go back
            self.select(self._last)
            return
        if cur != self._last:
            self._last = cur
            self.deviceChanged.emit(cur)

    def engine_spec(self) -> str | int | None:
        """What to hand the engine: the index from the current listing (exact, even when two
        host APIs share a name), the name if not listed, None for the default."""
        cur = self.current()
        if isinstance(cur, DeviceRef):
            if cur.is_default:
                return None
            idx = self.current_index()
            return idx if idx is not None else cur.name
        return cur  # type: ignore[return-value]

"""Slicer 5.10's own scripted-module framework on slicer-core's MRML, outside the Slicer application.

For tests only (never imported inside Slicer: it refuses to start when a real ``slicer.app`` exists)::

    from imagio.testing_slicer import SlicerHarness

    with SlicerHarness() as h:                       # or the ``slicer_app`` fixture of Testing/slicer
        module = h.load_module("IMAGIOLungNav")      # the module file, imported as Slicer imports it
        widget = h.create_widget("IMAGIOLungNav")    # its Widget, set up from its .ui file and entered
        h.run_event_loop(until=lambda: ..., timeout_s=60)

What is real: ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.util``,
``slicer.i18n``, ``slicer.testing`` are the unmodified files of Slicer v5.10.0 (the folder named by
``IMAGIO_SLICER_PYTHON``, default ``../shared/slicer-python-5.10``), appended to slicer-core's
``slicer.__path__``; ``slicer.mrmlScene`` is a real ``vtkMRMLScene`` and every node, observer and
parameter-node serialisation is slicer-core's MRML. slicer-core's own ``slicer.util`` (a later
version) is set aside while the harness runs, so module code meets 5.10's ``slicer.util``.

What is a stand-in (small objects defined here, nothing else): the ``qt`` and ``ctk`` modules, the
PythonQt-wrapped Slicer widgets (``slicer.qMRMLNodeComboBox`` ...) and the application object
``slicer.app``. They hold properties and emit signals the way Qt does for the properties the IMAGIO
modules and the parameter-node GUI connectors use (values clamped to a spin box's range, combo boxes
selecting their first item, node selectors following the scene); layout, painting, focus, real event
dispatch and PythonQt's type conversions are not modelled (Testing/slicer/README.md lists them).
Timers fire only inside :meth:`SlicerApp.processEvents` or :meth:`SlicerHarness.run_event_loop`, as
they would in Qt's event loop. ``slicer.app.processEventsCalls`` counts calls made by module code.

Test time: while a harness runs, ``imagio.phantom.make_phantom`` builds each phantom once per process and
hands out deep copies (it is deterministic per seed; every module's self-test builds the same seed-0
phantom, about 5 s of CPU each). A copy is independent: changing it changes no later phantom.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import importlib
import importlib.util
import inspect
import os
import pathlib
import sys
import tempfile
import time
import types
import typing
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer

import imagio.phantom

from .testing import REPO_ROOT

#: the modules of the extension, in load order (IMAGIOCommon first: the others depend on it)
MODULES = ("IMAGIOCommon", "IMAGIOPlanning", "IMAGIOAblationZone", "IMAGIOLungNav", "IMAGIOMargin")
SLICER_VERSION = (5, 10, 0)


def framework_dir() -> Path:
    """Folder holding Slicer 5.10's ``ScriptedLoadableModule.py`` & co."""
    env = os.environ.get("IMAGIO_SLICER_PYTHON")
    base = Path(env).expanduser() if env else (REPO_ROOT / ".." / "shared" / "slicer-python-5.10").resolve()
    return base / "slicer" if (base / "slicer").is_dir() else base


# ---------------------------------------------------------------------------------------------- signals
def _call_slot(slot, args):
    """Call ``slot`` with as many of ``args`` as it accepts (PythonQt does the same)."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot(*args)
    n = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return slot(*args[:n])


class Signal:
    """A Qt signal of one object: ``connect``, ``disconnect``, ``emit``."""

    def __init__(self, name: str):
        self.name = name
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot=None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self._slots):
            _call_slot(slot, args)

    def slotCount(self) -> int:
        return len(self._slots)


def _signal_name(signature: str) -> str:
    """``"clicked(bool)"`` -> ``"clicked"`` (PythonQt's string connections)."""
    return signature.split("(", 1)[0].strip()


# ---------------------------------------------------------------------------------------------- QObject
class QObject:
    """Qt object: properties as attributes (as PythonQt exposes them), signals, children."""

    SIGNALS: tuple[str, ...] = ("destroyed", "objectNameChanged")
    PROPS: dict = {"objectName": ""}

    def __init__(self, parent=None, *args, **kwargs):
        props = {}
        for cls in reversed(type(self).__mro__):
            props.update(getattr(cls, "PROPS", {}) if "PROPS" in cls.__dict__ else {})
        object.__setattr__(self, "_props", {k: (list(v) if isinstance(v, list) else v) for k, v in props.items()})
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_signals", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        if isinstance(parent, QObject):
            self.setParent(parent)

    # PythonQt exposes Q_PROPERTYs as attributes and objectName also as ``name``
    @classmethod
    def _all_signals(cls) -> set[str]:
        out = set()
        for c in cls.__mro__:
            out.update(c.__dict__.get("SIGNALS", ()))
        return out

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sigs = type(self)._all_signals()
        if name in sigs:
            s = self._signals.get(name)
            if s is None:
                s = self._signals[name] = Signal(name)
            return s
        props = self.__dict__.get("_props", {})
        if name in props:
            return props[name]
        if name == "name":
            return props.get("objectName", "")
        if name.startswith("set") and len(name) > 3:
            prop = name[3].lower() + name[4:]
            if prop in props:
                return lambda value: setattr(self, prop, value)
        raise AttributeError(f"{type(self).__name__} (a Qt stand-in) has no attribute '{name}'")

    def __setattr__(self, name, value):
        if name == "name":
            name = "objectName"
        if name in self.__dict__.get("_props", {}):
            self._set_prop(name, value)
        else:
            object.__setattr__(self, name, value)

    #: string properties that emit a change signal (property -> signal) only when their value changes, as Qt's do
    TEXT_PROPS: dict = {}

    def _set_prop(self, name, value) -> None:
        """Store a property value; subclasses coerce values and emit change signals here."""
        signal = self.TEXT_PROPS.get(name)
        if signal is not None:
            value = str(value)
            if value != self._props[name]:
                self._props[name] = value
                self._emit(signal, value)
            return
        self._props[name] = value

    def setObjectName(self, name: str) -> None:
        self._props["objectName"] = name

    def className(self) -> str:
        return type(self).__name__

    def inherits(self, class_name: str) -> bool:
        return any(c.__name__ == class_name for c in type(self).__mro__)

    def property(self, name: str):
        if name in self._dynamic:
            return self._dynamic[name]
        return self._props.get(name)

    def setProperty(self, name: str, value) -> None:
        if name in self._props:
            self._set_prop(name, value)
        else:
            self._dynamic[name] = value

    def parent(self):
        return self._parent

    def setParent(self, parent) -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None and self not in parent._children:
            parent._children.append(self)

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None, name: str | None = None) -> list:
        out = []
        stack = list(self._children)
        while stack:
            c = stack.pop(0)
            if (cls is None or isinstance(c, cls)) and (name is None or c.objectName == name):
                out.append(c)
            stack.extend(c._children)
        return out

    def findChild(self, cls, name: str):
        found = self.findChildren(cls, name)
        return found[0] if found else None

    def connect(self, signal, slot) -> bool:
        """PythonQt's ``obj.connect("clicked(bool)", slot)``."""
        getattr(self, _signal_name(signal)).connect(slot)
        return True

    def disconnect(self, signal, slot=None) -> bool:
        getattr(self, _signal_name(signal)).disconnect(slot)
        return True

    def isWidgetType(self) -> bool:
        return False

    def deleteLater(self) -> None:
        self.setParent(None)

    def blockSignals(self, block: bool) -> bool:
        old = bool(self.__dict__.get("_blocked", False))
        object.__setattr__(self, "_blocked", bool(block))
        return old

    def _emit(self, signal: str, *args) -> None:
        if not self.__dict__.get("_blocked", False):
            getattr(self, signal).emit(*args)


# ---------------------------------------------------------------------------------------------- widgets
class QWidget(QObject):
    PROPS = {"enabled": True, "visible": True, "toolTip": "", "statusTip": "", "whatsThis": "", "styleSheet": "",
             "windowTitle": "", "minimumHeight": 0, "maximumHeight": 16777215, "minimumWidth": 0}

    def __init__(self, parent=None, *args, **kwargs):
        super().__init__(parent)
        object.__setattr__(self, "_layout", None)

    def isWidgetType(self) -> bool:
        return True

    def layout(self):
        return self._layout

    def setLayout(self, layout) -> None:
        object.__setattr__(self, "_layout", layout)
        layout._owner = self
        layout.setParent(self)
        for w in layout._widgets:
            w.setParent(self)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def isVisible(self) -> bool:
        return bool(self.visible)

    def isEnabled(self) -> bool:
        return bool(self.enabled)

    def close(self) -> bool:
        self.visible = False
        return True

    def setSizePolicy(self, *args) -> None:
        pass

    def setMRMLScene(self, scene) -> None:
        """qMRMLWidget API on a plain widget would be an AttributeError in Slicer too."""
        raise AttributeError(f"{type(self).__name__} has no setMRMLScene (not an MRML widget)")


class QFrame(QWidget):
    PROPS = {"frameShape": 0}


class QGroupBox(QWidget):
    PROPS = {"title": "", "checkable": False, "checked": True}
    SIGNALS = ("toggled", "clicked")


class QDialog(QWidget):
    SIGNALS = ("accepted", "rejected", "finished")

    def exec_(self) -> int:
        return 0

    exec = exec_

    def accept(self) -> None:
        self._emit("accepted")

    def reject(self) -> None:
        self._emit("rejected")


class QLabel(QWidget):
    PROPS = {"text": "", "wordWrap": False, "textFormat": 0, "alignment": 0, "openExternalLinks": False,
             "textInteractionFlags": 0}

    def __init__(self, text="", parent=None, *args):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self._props["text"] = str(text)


class QAbstractButton(QWidget):
    PROPS = {"text": "", "checkable": False, "checked": False, "icon": None, "iconSize": None}
    SIGNALS = ("clicked", "toggled", "pressed", "released")

    def __init__(self, text="", parent=None, *args):
        if isinstance(text, QObject):
            text, parent = "", text
        super().__init__(parent)
        self._props["text"] = str(text)

    def _set_prop(self, name, value) -> None:
        if name == "checked":
            value = bool(value) and bool(self._props["checkable"])
            changed = value != self._props["checked"]
            self._props["checked"] = value
            if changed:
                self._on_toggled(value)
            return
        super()._set_prop(name, value)

    def _on_toggled(self, value: bool) -> None:
        self._emit("toggled", value)

    def isChecked(self) -> bool:
        return bool(self._props["checked"])

    def click(self) -> None:
        """A user's click: nothing when disabled; toggles a checkable button, then emits clicked(checked)."""
        if not self._props["enabled"]:
            return
        self._emit("pressed")
        self._emit("released")
        if self._props["checkable"]:
            self.checked = not self._props["checked"]
        self._emit("clicked", bool(self._props["checked"]))


class QPushButton(QAbstractButton):
    PROPS = {"default": False, "flat": False}


class QToolButton(QAbstractButton):
    PROPS = {"toolButtonStyle": 0, "popupMode": 0}


class QRadioButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    PROPS = {"checkable": True, "tristate": False}
    SIGNALS = ("stateChanged",)

    def _on_toggled(self, value: bool) -> None:
        self._emit("toggled", value)
        self._emit("stateChanged", 2 if value else 0)


class QProgressBar(QWidget):
    PROPS = {"value": 0, "minimum": 0, "maximum": 100, "format": "%p%", "textVisible": True, "orientation": 1}
    SIGNALS = ("valueChanged",)

    def _set_prop(self, name, value) -> None:
        if name == "value":
            value = int(value)
            if not self._props["minimum"] <= value <= self._props["maximum"]:
                return  # Qt: a value outside the range does not change the bar
            if value != self._props["value"]:
                self._props["value"] = value
                self._emit("valueChanged", value)
            return
        super()._set_prop(name, value)

    def setRange(self, lo, hi) -> None:
        self._props["minimum"], self._props["maximum"] = int(lo), int(hi)

    def reset(self) -> None:
        self._props["value"] = self._props["minimum"]

    def text(self) -> str:
        lo, hi, v = self._props["minimum"], self._props["maximum"], self._props["value"]
        pct = 0 if hi <= lo else int(round(100.0 * (v - lo) / (hi - lo)))
        return self._props["format"].replace("%p", str(pct)).replace("%v", str(v)).replace("%m", str(hi))


class QComboBox(QWidget):
    PROPS = {"currentIndex": -1, "editable": False, "maxVisibleItems": 10}
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_items", [])

    def _set_prop(self, name, value) -> None:
        if name == "currentIndex":
            value = int(value)
            if not 0 <= value < len(self._items):
                value = -1
            if value != self._props["currentIndex"]:
                self._props["currentIndex"] = value
                self._emit("currentIndexChanged", value)
                self._emit("currentTextChanged", self.currentText)
            return
        super()._set_prop(name, value)

    def __getattr__(self, name):
        if name == "currentText":
            i = self._props["currentIndex"]
            return self._items[i][0] if i >= 0 else ""
        if name == "count":
            return len(self._items)
        return super().__getattr__(name)

    def addItem(self, text, userData=None) -> None:
        self._items.append((str(text), userData))
        if self._props["currentIndex"] < 0:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for t in texts:
            self.addItem(t)

    def clear(self) -> None:
        self._items.clear()
        self.currentIndex = -1

    def itemText(self, i: int) -> str:
        return self._items[i][0]

    def itemData(self, i: int):
        return self._items[i][1]

    def findText(self, text: str) -> int:
        return next((i for i, (t, _) in enumerate(self._items) if t == text), -1)

    def setCurrentText(self, text: str) -> None:
        i = self.findText(text)
        if i >= 0:
            self.currentIndex = i


class QLineEdit(QWidget):
    PROPS = {"text": "", "placeholderText": "", "readOnly": False}
    SIGNALS = ("textChanged", "textEdited", "editingFinished", "returnPressed")
    TEXT_PROPS = {"text": "textChanged"}


class QTextEdit(QWidget):
    PROPS = {"plainText": "", "readOnly": False}
    SIGNALS = ("textChanged",)

    def toPlainText(self) -> str:
        return self._props["plainText"]

    def setPlainText(self, text: str) -> None:
        if text != self._props["plainText"]:
            self._props["plainText"] = text
            self._emit("textChanged")


QPlainTextEdit = QTextEdit


class _NumberBox(QWidget):
    """Value with a range and a number of decimals (QSpinBox, QDoubleSpinBox, ctk sliders)."""

    INTEGER = False
    PROPS = {"value": 0.0, "minimum": 0.0, "maximum": 99.99, "decimals": 2, "singleStep": 1.0, "suffix": "",
             "prefix": "", "keyboardTracking": True, "readOnly": False}
    SIGNALS = ("valueChanged",)

    def _fit(self, value):
        v = min(max(float(value), float(self._props["minimum"])), float(self._props["maximum"]))
        return int(round(v)) if self.INTEGER else round(v, int(self._props["decimals"]))

    def _set_prop(self, name, value) -> None:
        if name == "value":
            value = self._fit(value)
            if value != self._props["value"]:
                self._props["value"] = value
                self._emit("valueChanged", value)
            return
        super()._set_prop(name, value)
        if name in ("minimum", "maximum", "decimals"):
            if name == "minimum" and self._props["maximum"] < value:
                self._props["maximum"] = value
            if name == "maximum" and self._props["minimum"] > value:
                self._props["minimum"] = value
            self.value = self._props["value"]  # Qt re-fits the value to the new range

    def setRange(self, lo, hi) -> None:
        self._props["minimum"], self._props["maximum"] = lo, max(lo, hi)
        self.value = self._props["value"]

    def setMinimum(self, v) -> None:
        self.minimum = v

    def setMaximum(self, v) -> None:
        self.maximum = v


class QSpinBox(_NumberBox):
    INTEGER = True
    PROPS = {"value": 0, "minimum": 0, "maximum": 99, "singleStep": 1}


class QDoubleSpinBox(_NumberBox):
    pass


class QSlider(QSpinBox):
    PROPS = {"orientation": 1}


class QLayout(QObject):
    def __init__(self, parent=None, *args):
        super().__init__(None)
        object.__setattr__(self, "_widgets", [])
        object.__setattr__(self, "_owner", None)
        object.__setattr__(self, "cells", [])  # (row, column, item) as placed
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def _add(self, w, row=None, col=None) -> None:
        self.cells.append((row, col, w))
        if isinstance(w, QWidget):
            self._widgets.append(w)
            if self._owner is not None:
                w.setParent(self._owner)
        elif isinstance(w, QLayout):
            w.setParent(self)
            object.__setattr__(w, "_owner", self._owner)

    def addWidget(self, w, *args) -> None:
        self._add(w, *(args[:2] if len(args) >= 2 else ()))

    def addLayout(self, layout, *args) -> None:
        self._add(layout, *(args[:2] if len(args) >= 2 else ()))

    def addItem(self, item, *args) -> None:
        self.cells.append((None, None, item))

    def addStretch(self, *args) -> None:
        pass

    def addSpacing(self, *args) -> None:
        pass

    def count(self) -> int:
        return len(self.cells)

    def setContentsMargins(self, *args) -> None:
        pass

    def setSpacing(self, *args) -> None:
        pass


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QFormLayout(QLayout):
    def addRow(self, a, b=None) -> None:
        row = len({r for r, _, _ in self.cells if r is not None})
        if b is None:
            self._add(a, row, 0)
        else:
            if isinstance(a, str):
                a = QLabel(a)
            self._add(a, row, 0)
            self._add(b, row, 1)


class QTimer(QObject):
    """Fires ``timeout`` from :meth:`SlicerApp.processEvents` once its interval has passed."""

    PROPS = {"interval": 0}
    SIGNALS = ("timeout",)

    class _SingleShot:
        """``qt.QTimer.singleShot(msec, slot)`` (static) and ``timer.singleShot`` (a property) in one name."""

        def __get__(self, obj, cls):
            if obj is None:
                return cls._single_shot
            return obj.__dict__.get("_single", False)

        def __set__(self, obj, value):
            obj.__dict__["_single"] = bool(value)

    singleShot = _SingleShot()

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_due", None)

    @classmethod
    def _single_shot(cls, msec, slot) -> None:
        t = cls()
        t.singleShot = True
        t.interval = int(msec)
        t.timeout.connect(slot)
        t.start()
        _APP_STATE["pending_single_shots"].append(t)

    def start(self, msec=None) -> None:
        if msec is not None:
            self.interval = int(msec)
        object.__setattr__(self, "_due", time.monotonic() + self._props["interval"] / 1000.0)
        _APP_STATE["timers"].add(self)

    def stop(self) -> None:
        object.__setattr__(self, "_due", None)
        _APP_STATE["timers"].discard(self)

    def isActive(self) -> bool:
        return self._due is not None

    def _fire_if_due(self, now: float) -> bool:
        if self._due is None or now < self._due:
            return False
        if self.singleShot:
            self.stop()
        else:
            object.__setattr__(self, "_due", now + self._props["interval"] / 1000.0)
        self._emit("timeout")
        return True


_APP_STATE: dict = {"timers": set(), "pending_single_shots": [], "settings": {}, "cursor_depth": 0}


class QSettings(QObject):
    """In-memory settings shared by every QSettings() of one harness run."""

    def __init__(self, *args):
        super().__init__(None)

    def value(self, key, default=None):
        return _APP_STATE["settings"].get(key, default)

    def setValue(self, key, value) -> None:
        _APP_STATE["settings"][key] = value

    def contains(self, key) -> bool:
        return key in _APP_STATE["settings"]

    def remove(self, key) -> None:
        _APP_STATE["settings"].pop(key, None)

    def allKeys(self) -> list:
        return list(_APP_STATE["settings"])

    def sync(self) -> None:
        pass


class QIcon:
    def __init__(self, path=None):
        self.path = str(path) if path is not None else None

    def isNull(self) -> bool:
        return not self.path or not Path(self.path).is_file()


class QColor:
    def __init__(self, *rgb):
        self.rgb = tuple(rgb) if rgb else (0, 0, 0)

    def name(self) -> str:
        if len(self.rgb) >= 3 and all(isinstance(v, int) for v in self.rgb[:3]):
            return "#{:02x}{:02x}{:02x}".format(*self.rgb[:3])
        return str(self.rgb[0]) if self.rgb else ""


class QSize:
    def __init__(self, w=0, h=0):
        self.w, self.h = w, h

    def width(self):
        return self.w

    def height(self):
        return self.h


class QSizePolicy:
    Fixed, Minimum, Maximum, Preferred, Expanding, MinimumExpanding, Ignored = 0, 1, 4, 5, 7, 3, 13

    def __init__(self, *args):
        pass

    def setHorizontalPolicy(self, *args):
        pass

    def setVerticalPolicy(self, *args):
        pass


class QFile:
    ReadOnly, WriteOnly, ReadWrite, Text = 1, 2, 3, 16

    def __init__(self, path):
        self.path = str(path)

    def exists(self) -> bool:
        return Path(self.path).is_file()

    def open(self, mode) -> bool:
        return self.exists()

    def close(self) -> None:
        pass

    def fileName(self) -> str:
        return self.path


class QMessageBox(QDialog):
    NoButton, Ok, Save, Open, Yes, No, Abort, Retry, Ignore, Close, Cancel = (
        0, 0x400, 0x800, 0x2000, 0x4000, 0x10000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000)
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4
    PROPS = {"text": "", "informativeText": "", "detailedText": "", "icon": 0, "standardButtons": 0x400}

    def exec_(self) -> int:
        return _answer_dialog(self)

    exec = exec_


class Qt:
    """The few ``qt.Qt`` enum values IMAGIO and the framework code use."""

    ArrowCursor, WaitCursor, BusyCursor = 0, 3, 16
    NoModifier, ShiftModifier, ControlModifier = 0, 0x02000000, 0x04000000
    Horizontal, Vertical = 1, 2
    AlignLeft, AlignRight, AlignCenter, AlignTop = 0x1, 0x2, 0x84, 0x20
    TextSelectableByMouse = 1
    ToolButtonTextUnderIcon = 3
    RichText, PlainText = 1, 0
    Checked, Unchecked = 2, 0


class QApplication:
    @staticmethod
    def setOverrideCursor(cursor) -> None:
        _APP_STATE["cursor_depth"] += 1

    @staticmethod
    def restoreOverrideCursor() -> None:
        _APP_STATE["cursor_depth"] -= 1

    @staticmethod
    def processEvents() -> None:
        if isinstance(getattr(slicer, "app", None), SlicerApp):
            slicer.app.processEvents()


class QUiLoader(QObject):
    """Builds a stand-in widget tree from a Qt Designer ``.ui`` file (see :func:`load_ui_tree`)."""

    def load(self, qfile, parent=None):
        return load_ui_tree(Path(qfile.fileName() if isinstance(qfile, QFile) else qfile))


# ---------------------------------------------------------------------------------------------- ctk
class ctkCollapsibleButton(QAbstractButton):
    PROPS = {"collapsed": False, "checkable": True, "checked": True, "contentsFrameShape": 0, "collapsedHeight": 14}
    SIGNALS = ("contentsCollapsed",)

    def _set_prop(self, name, value) -> None:
        if name == "collapsed":
            value = bool(value)
            if value != self._props["collapsed"]:
                self._props["collapsed"] = value
                self._props["checked"] = not value
                self._emit("contentsCollapsed", value)
            return
        super()._set_prop(name, value)


class ctkCollapsibleGroupBox(QGroupBox):
    PROPS = {"collapsed": False}


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    PROPS = {"defaultText": ""}


class ctkCheckablePushButton(QPushButton):
    PROPS = {"checkBoxControlsButtonToggleState": False, "checkState": 0}
    SIGNALS = ("checkBoxToggled",)


class ctkDoubleSpinBox(_NumberBox):
    PROPS = {"quantity": "", "unitAwareProperties": 0}


class ctkSliderWidget(_NumberBox):
    PROPS = {"pageStep": 10.0, "tracking": True, "quantity": "", "unitAwareProperties": 0}


class ctkDoubleSlider(_NumberBox):
    PROPS = {"orientation": 1}


class ctkPathLineEdit(QWidget):
    Dirs, Files, Drives, Executable, Readable, Writable = 1, 2, 4, 0x20, 0x100, 0x200
    PROPS = {"currentPath": "", "filters": 0, "nameFilters": [], "settingKey": "", "showBrowseButton": True,
             "showHistoryButton": True, "label": ""}
    SIGNALS = ("currentPathChanged", "validInputChanged")
    TEXT_PROPS = {"currentPath": "currentPathChanged"}


class ctkDirectoryButton(QWidget):
    PROPS = {"directory": "", "caption": ""}
    SIGNALS = ("directoryChanged", "directorySelected")
    TEXT_PROPS = {"directory": "directoryChanged"}


class ctkDICOMDatabase(QObject):
    """Slicer's DICOM database (``slicer.dicomDatabase``) for what the IMAGIO modules ask of it: whether it is
    open and the file of an instance (``fileForInstance``, "" when unknown). ``insert(path)`` indexes a DICOM file
    by its SOP Instance UID, as importing a folder in the DICOM module does (the real one also copies the file
    into the database folder and indexes far more)."""

    PROPS = {"isOpen": True}

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_files", {})

    def insert(self, path, *args) -> None:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        self._files[str(ds.SOPInstanceUID)] = str(Path(path).resolve())

    def fileForInstance(self, sop_instance_uid: str) -> str:
        return self._files.get(str(sop_instance_uid), "")

    def closeDatabase(self) -> None:
        self._set_prop("isOpen", False)


class ctkRangeWidget(QWidget):
    PROPS = {"minimum": 0.0, "maximum": 99.0, "minimumValue": 0.0, "maximumValue": 99.0, "decimals": 2,
             "singleStep": 1.0}
    SIGNALS = ("valuesChanged",)

    def setRange(self, lo, hi) -> None:
        self._props["minimum"], self._props["maximum"] = lo, hi

    def setValues(self, lo, hi) -> None:
        lo, hi = max(lo, self._props["minimum"]), min(hi, self._props["maximum"])
        if (lo, hi) != (self._props["minimumValue"], self._props["maximumValue"]):
            self._props["minimumValue"], self._props["maximumValue"] = lo, hi
            self._emit("valuesChanged", lo, hi)


class ctkDoubleRangeSlider(ctkRangeWidget):
    pass


class ctkColorPickerButton(QPushButton):
    PROPS = {"color": None, "displayColorName": True}
    SIGNALS = ("colorChanged",)


class ctkMessageBox(QMessageBox):
    PROPS = {"dontShowAgainSettingsKey": "", "dontShowAgainVisible": False}


# ---------------------------------------------------------------------------------------------- PythonQt-wrapped Slicer widgets
class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_scene", None)

    def setMRMLScene(self, scene) -> None:
        if scene is not self._scene:
            object.__setattr__(self, "_scene", scene)
            self._on_scene(scene)
            self._emit("mrmlSceneChanged", scene)

    def _on_scene(self, scene) -> None:
        pass

    def mrmlScene(self):
        return self._scene


class qSlicerWidget(qMRMLWidget):
    pass


class qSlicerScriptedLoadableModuleWidget(qSlicerWidget):
    """The widget the application gives a scripted module's Widget class as ``parent``."""

    PROPS = {"isEntered": False}

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "python_widget", None)

    def self(self):
        return self.python_widget


_SCENE_WIDGETS: weakref.WeakSet = weakref.WeakSet()


class _SceneObserving(qMRMLWidget):
    """Keeps the selection valid while nodes are added to / removed from the scene (real MRML events)."""

    def _on_scene(self, scene) -> None:
        old = self.__dict__.get("_scene_tags", [])
        old_scene = self.__dict__.get("_observed_scene")
        for tag in old:
            if old_scene is not None:
                old_scene.RemoveObserver(tag)
        tags = []
        if scene is not None:
            tags.append(scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._scene_changed))
            tags.append(scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._scene_changed))
            tags.append(scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, self._scene_changed))
        object.__setattr__(self, "_scene_tags", tags)
        object.__setattr__(self, "_observed_scene", scene)
        _SCENE_WIDGETS.add(self)
        self._scene_changed()

    def _scene_changed(self, *args) -> None:
        pass

    def _detach(self) -> None:
        """Stop observing the scene (the widget is gone)."""
        scene = self.__dict__.get("_observed_scene")
        for tag in self.__dict__.get("_scene_tags", []):
            if scene is not None:
                scene.RemoveObserver(tag)
        self.__dict__["_scene_tags"] = []


class qMRMLNodeComboBox(_SceneObserving):
    PROPS = {"nodeTypes": [], "noneEnabled": False, "addEnabled": True, "removeEnabled": True,
             "renameEnabled": False, "editEnabled": False, "showHidden": False, "showChildNodeTypes": True,
             "selectNodeUponCreation": True, "baseName": "", "hideChildNodeTypes": [], "noneDisplay": "None",
             "interactionNodeSingletonTag": ""}
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeActivated", "nodeAddedByUser")

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_current", None)

    def _matches(self, node) -> bool:
        if node is None or self._scene is None or node.GetScene() is not self._scene:
            return False
        types_ = list(self._props["nodeTypes"])
        if not types_:
            return False
        if node.GetHideFromEditors() and not self._props["showHidden"]:
            return False
        if self._props["showChildNodeTypes"]:
            ok = any(node.IsA(t) for t in types_)
        else:
            ok = node.GetClassName() in types_
        return ok and not any(node.IsA(t) for t in self._props["hideChildNodeTypes"])

    def nodes(self) -> list:
        if self._scene is None:
            return []
        out = []
        for t in self._props["nodeTypes"]:
            coll = self._scene.GetNodesByClass(t)
            for i in range(coll.GetNumberOfItems()):
                n = coll.GetItemAsObject(i)
                if self._matches(n) and n not in out:
                    out.append(n)
        return out

    def nodeCount(self) -> int:
        return len(self.nodes())

    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        new = node if self._matches(node) else None
        if new is None and not self._props["noneEnabled"]:
            available = self.nodes()
            new = available[0] if available else None
        if new is not self._current:
            object.__setattr__(self, "_current", new)
            self._emit("currentNodeChanged", new)
            self._emit("currentNodeIDChanged", new.GetID() if new is not None else "")

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)

    def _set_prop(self, name, value) -> None:
        super()._set_prop(name, list(value) if name in ("nodeTypes", "hideChildNodeTypes") else value)
        if name in ("nodeTypes", "noneEnabled", "showHidden", "showChildNodeTypes"):
            self._scene_changed()

    def _scene_changed(self, *args) -> None:
        cur = self.__dict__.get("_current")
        if cur is not None and not self._matches(cur) or cur is None and not self._props["noneEnabled"]:
            self.setCurrentNode(None)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    """Its check boxes (Slicer's checkState / setCheckState / checkedNodes; Qt::Checked is 2): unchecked at first."""

    SIGNALS = ("checkedNodesChanged",)

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_checked", set())

    def checkState(self, node) -> int:
        return 2 if node is not None and node.GetID() in self._checked else 0

    def setCheckState(self, node, state) -> None:
        if node is None or not self._matches(node) or (int(state) == 2) == (node.GetID() in self._checked):
            return
        (self._checked.add if int(state) == 2 else self._checked.discard)(node.GetID())
        self._emit("checkedNodesChanged")

    def checkedNodes(self) -> list:
        return [n for n in self.nodes() if n.GetID() in self._checked]


class qMRMLSegmentSelectorWidget(_SceneObserving):
    """Segmentation node + segment ID(s): Slicer's ``qMRMLSegmentSelectorWidget`` (5.10 API)."""

    PROPS = {"noneEnabled": False, "editEnabled": False, "segmentationNodeSelectorVisible": True,
             "multiSelection": False, "horizontalLayout": False, "selectNodeUponCreation": True}
    SIGNALS = ("currentNodeChanged", "currentSegmentChanged", "segmentSelectionChanged", "nodeAboutToBeEdited")

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_node", None)
        object.__setattr__(self, "_segment", "")
        object.__setattr__(self, "_selected", [])

    def currentNode(self):
        return self._node

    def currentNodeID(self) -> str:
        return self._node.GetID() if self._node is not None else ""

    def segmentIDs(self) -> list[str]:
        if self._node is None or self._node.GetSegmentation() is None:
            return []
        seg = self._node.GetSegmentation()
        return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]

    def setCurrentNode(self, node) -> None:
        if node is not None and (not node.IsA("vtkMRMLSegmentationNode") or node.GetScene() is not self._scene):
            node = None
        if node is not self._node:
            object.__setattr__(self, "_node", node)
            self._emit("currentNodeChanged", node)
        self._refresh_segments()

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)

    def _refresh_segments(self) -> None:
        ids = self.segmentIDs()
        if self._segment not in ids:
            self.setCurrentSegmentID(ids[0] if ids and not self._props["noneEnabled"] else "")
        kept = [s for s in self._selected if s in ids]
        if kept != self._selected:
            self.setSelectedSegmentIDs(kept)

    def currentSegmentID(self) -> str:
        return self._segment

    def setCurrentSegmentID(self, segment_id) -> None:
        segment_id = str(segment_id or "")
        if segment_id and segment_id not in self.segmentIDs():
            segment_id = ""
        if segment_id != self._segment:
            object.__setattr__(self, "_segment", segment_id)
            self._emit("currentSegmentChanged", segment_id)

    def selectedSegmentIDs(self) -> list[str]:
        return list(self._selected)

    def setSelectedSegmentIDs(self, ids) -> None:
        valid = [s for s in (ids or []) if s in self.segmentIDs()]
        if valid != self._selected:
            object.__setattr__(self, "_selected", valid)
            self._emit("segmentSelectionChanged", list(valid))

    def _scene_changed(self, *args) -> None:
        node = self.__dict__.get("_node")
        if node is not None and node.GetScene() is not self._scene:
            self.setCurrentNode(None)
        elif node is not None:
            self._refresh_segments()


class qSlicerMarkupsPlaceWidget(qSlicerWidget):
    PROPS = {"buttonsVisible": True, "deleteAllControlPointsOptionVisible": True, "placeMultipleMarkups": 0,
             "unsetLastControlPointOptionVisible": True, "placeModeEnabled": False, "placeModePersistency": False}
    SIGNALS = ("activeMarkupsPlaceModeChanged", "activeMarkupsFiducialPlaceModeChanged")
    ForcePlaceSingleMarkup, ForcePlaceMultipleMarkups, ShowPlaceMultipleMarkupsOption = 0, 1, 2

    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_node", None)

    def setCurrentNode(self, node) -> None:
        object.__setattr__(self, "_node", node)

    def currentNode(self):
        return self._node

    currentMarkupsNode = currentNode


class qMRMLTableView(qMRMLWidget):
    def __init__(self, parent=None, *args):
        super().__init__(parent)
        object.__setattr__(self, "_table", None)

    def setMRMLTableNode(self, node) -> None:
        object.__setattr__(self, "_table", node)

    def mrmlTableNode(self):
        return self._table


class qMRMLSliderWidget(ctkSliderWidget, qMRMLWidget):
    pass


class qMRMLSpinBox(ctkDoubleSpinBox, qMRMLWidget):
    pass


class qMRMLRangeWidget(ctkRangeWidget, qMRMLWidget):
    pass


#: Widget classes the stand-ins provide, by the module they come from in Slicer (``qt``, ``ctk``, ``slicer``).
QT_CLASSES = {c.__name__: c for c in (
    QObject, QWidget, QFrame, QGroupBox, QDialog, QLabel, QPushButton, QToolButton, QRadioButton, QCheckBox,
    QProgressBar, QComboBox, QLineEdit, QTextEdit, QSpinBox, QDoubleSpinBox, QSlider, QVBoxLayout, QHBoxLayout,
    QGridLayout, QFormLayout, QTimer, QSettings, QMessageBox)}
QT_CLASSES["QPlainTextEdit"] = QPlainTextEdit
CTK_CLASSES = {c.__name__: c for c in (
    ctkCollapsibleButton, ctkCollapsibleGroupBox, ctkCheckBox, ctkComboBox, ctkCheckablePushButton,
    ctkDoubleSpinBox, ctkSliderWidget, ctkDoubleSlider, ctkPathLineEdit, ctkDirectoryButton, ctkMessageBox,
    ctkRangeWidget, ctkDoubleRangeSlider, ctkColorPickerButton, ctkDICOMDatabase)}
SLICER_CLASSES = {c.__name__: c for c in (
    qMRMLWidget, qSlicerWidget, qSlicerScriptedLoadableModuleWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox,
    qMRMLSegmentSelectorWidget, qSlicerMarkupsPlaceWidget, qMRMLTableView, qMRMLSliderWidget, qMRMLSpinBox,
    qMRMLRangeWidget)}


def _make_module(name: str, classes: dict, extra: dict) -> types.ModuleType:
    m = types.ModuleType(name, f"IMAGIO test stand-in for the '{name}' module of 3D Slicer (see imagio.testing_slicer)")
    m.__dict__.update(classes)
    m.__dict__.update(extra)
    m.__dict__["IMAGIO_STANDIN"] = True
    return m


QT_MODULE = _make_module("qt", QT_CLASSES, {
    "QIcon": QIcon, "QColor": QColor, "QSize": QSize, "QSizePolicy": QSizePolicy, "QFile": QFile, "Qt": Qt,
    "QApplication": QApplication, "QUiLoader": QUiLoader, "QLayout": QLayout, "QAbstractButton": QAbstractButton})
CTK_MODULE = _make_module("ctk", CTK_CLASSES, {})


# ---------------------------------------------------------------------------------------------- .ui loading
def _ui_value(prop: ET.Element):
    """The value of a ``<property>`` element, as Qt Designer writes it."""
    child = next(iter(prop), None)
    if child is None:
        return None
    tag, text = child.tag, (child.text or "")
    if tag == "string":
        return text
    if tag == "bool":
        return text.strip() == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag in ("enum", "set"):
        names = [s.strip().split("::")[-1] for s in text.split("|")]
        vals = [getattr(Qt, n, 0) for n in names]
        return sum(vals)
    return text  # rect, size, font ...: kept as text (layout is not modelled)


def _class_for(name: str):
    for table in (QT_CLASSES, CTK_CLASSES, SLICER_CLASSES):
        if name in table:
            return table[name]
    raise RuntimeError(f"The Qt stand-ins have no class '{name}' (a .ui file uses it): add a small stand-in to "
                       "imagio/testing_slicer.py if Slicer 5.10 provides it (see Testing/slicer/slicer510_widget_classes.json)")


def _build(elem: ET.Element, parent, owner_layout=None, row=None, col=None):
    if elem.tag == "widget":
        w = _class_for(elem.get("class"))(None)
        w.objectName = elem.get("name", "")
        for prop in elem.findall("property"):
            name, value = prop.get("name"), _ui_value(prop)
            if prop.get("stdset") == "0":
                w._dynamic[name] = value
            elif name in w._props:
                w._set_prop(name, value)
            else:
                w._dynamic[name] = value
        if owner_layout is not None:
            owner_layout.addWidget(w, *((row, col) if row is not None else ()))
        elif parent is not None:
            w.setParent(parent)
        for child in elem:
            if child.tag in ("layout", "widget"):
                _build(child, w)
        return w
    if elem.tag == "layout":
        lay = _class_for(elem.get("class"))(None)
        lay.objectName = elem.get("name", "")
        if isinstance(parent, QWidget):
            parent.setLayout(lay)
        elif owner_layout is not None:
            owner_layout.addLayout(lay, *((row, col) if row is not None else ()))
        for item in elem.findall("item"):
            r = item.get("row")
            c = item.get("column")
            for child in item:
                if child.tag in ("widget", "layout"):
                    _build(child, lay if child.tag == "layout" else lay._owner, owner_layout=lay,
                           row=int(r) if r is not None else None, col=int(c) if c is not None else None)
                elif child.tag == "spacer":
                    lay.addItem(child.get("name"))
        return lay
    return None


def load_ui_tree(path: Path):
    """The root widget of a ``.ui`` file, with its children, properties and signal-slot connections."""
    root = ET.parse(path).getroot()
    top = _build(root.find("widget"), None)
    by_name = {top.objectName: top, **{w.objectName: w for w in top.findChildren(QObject) if w.objectName}}
    conns = root.find("connections")
    for c in (conns.findall("connection") if conns is not None else []):
        sender, receiver = by_name.get(c.findtext("sender")), by_name.get(c.findtext("receiver"))
        if sender is None or receiver is None:
            raise RuntimeError(f"{path.name}: a connection names a widget that does not exist")
        slot = getattr(receiver, _signal_name(c.findtext("slot")))
        getattr(sender, _signal_name(c.findtext("signal"))).connect(slot)
    return top


# ---------------------------------------------------------------------------------------------- dialogs
_DIALOG_ANSWERS: list = []
DIALOGS: list[dict] = []


def _answer_dialog(box) -> int:
    """Record a message box and return the answer queued by :meth:`SlicerHarness.answer_dialogs`."""
    DIALOGS.append({"text": box._props.get("text", ""), "title": box._props.get("windowTitle", ""),
                    "icon": box._props.get("icon", 0), "buttons": box._props.get("standardButtons", 0)})
    if not _DIALOG_ANSWERS:
        raise AssertionError(f"A dialog was shown that the test did not expect: {DIALOGS[-1]['text'][:200]}")
    return _DIALOG_ANSWERS.pop(0)


# ---------------------------------------------------------------------------------------------- the application
class _ModuleManager(QObject):
    SIGNALS = ("moduleAboutToBeUnloaded", "moduleLoaded")

    def __init__(self):
        super().__init__(None)
        object.__setattr__(self, "modules", {})

    def module(self, name: str):
        return self.modules.get(name)

    def factoryManager(self):
        mgr = self

        class _Factory:
            @staticmethod
            def loadedModuleNames():
                return list(mgr.modules)

        return _Factory()


class qSlicerScriptedLoadableModule(QObject):
    """What Slicer hands a scripted module class as ``parent`` (title, categories ... are set on it)."""

    PROPS = {"title": "", "categories": [], "dependencies": [], "contributors": [], "helpText": "",
             "acknowledgementText": "", "hidden": False, "icon": None, "index": -1, "path": ""}

    def __init__(self, path: Path):
        super().__init__(None)
        self._props["path"] = str(path)
        object.__setattr__(self, "_widget", None)

    def widgetRepresentation(self):
        return self._widget

    createNewWidgetRepresentation = widgetRepresentation

    @property
    def name(self) -> str:  # noqa: D401 - the module name, as qSlicerAbstractCoreModule::name()
        return Path(self._props["path"]).stem


class SlicerApp(QObject):
    """Stand-in for ``qSlicerApplication``: version, settings, cursor, event processing, module manager."""

    SIGNALS = ("startupCompleted", "aboutToQuit")

    def __init__(self, scene, version=SLICER_VERSION, testing: bool = True, temp_dir: str | None = None):
        super().__init__(None)
        object.__setattr__(self, "scene", scene)
        object.__setattr__(self, "version", tuple(version))
        object.__setattr__(self, "testing", testing)
        object.__setattr__(self, "processEventsCalls", 0)
        object.__setattr__(self, "_manager", _ModuleManager())
        object.__setattr__(self, "temporaryPath", temp_dir or tempfile.gettempdir())
        object.__setattr__(self, "main_window", None)

    # version (qSlicerCoreApplication)
    @property
    def majorVersion(self) -> int:
        return self.version[0]

    @property
    def minorVersion(self) -> int:
        return self.version[1]

    @property
    def applicationVersion(self) -> str:
        return ".".join(str(v) for v in self.version)

    applicationName = "3D Slicer"
    revision = "33990"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def moduleDocumentationUrl(self, name: str) -> str:
        return self.documentationBaseUrl + "user_guide/modules/" + name.lower() + ".html"

    def testingEnabled(self) -> bool:
        return self.testing

    def mrmlScene(self):
        return self.scene

    def moduleManager(self):
        return self._manager

    def userSettings(self):
        return QSettings()

    settings = userSettings

    def translate(self, context, text):
        return text

    def layoutManager(self):
        return None  # no views (as Slicer started with --no-main-window)

    def topLevelWidgets(self) -> list:
        return [self.main_window] if self.main_window is not None else []

    def setOverrideCursor(self, cursor) -> None:
        QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:
        QApplication.restoreOverrideCursor()

    def pauseRender(self) -> None:
        pass

    def resumeRender(self) -> None:
        pass

    def processEvents(self, *args) -> None:
        """Called by module code: counted (``processEventsCalls``), then due timers fire."""
        object.__setattr__(self, "processEventsCalls", self.processEventsCalls + 1)
        self._run_due_timers()

    def _run_due_timers(self) -> int:
        now = time.monotonic()
        fired = 0
        for t in sorted(_APP_STATE["timers"], key=id):
            if t._fire_if_due(now):
                fired += 1
        _APP_STATE["pending_single_shots"] = [t for t in _APP_STATE["pending_single_shots"] if t.isActive()]
        return fired


# ---------------------------------------------------------------------------------------------- the harness
class SlicerHarness:
    """Installs the framework and the stand-ins, gives a fresh scene, and takes them away again."""

    def __init__(self, version=SLICER_VERSION, testing: bool = True):
        self.version = tuple(version)
        self.testing = testing
        self.app: SlicerApp | None = None
        self._saved: dict = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.modules: dict[str, types.ModuleType] = {}

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> SlicerHarness:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SlicerHarness:
        fw = framework_dir()
        if not (fw / "ScriptedLoadableModule.py").is_file():  # as imagio.testing.data_path: skip, fail in CI
            import pytest

            msg = f"Slicer 5.10's framework files are not in {fw} (set IMAGIO_SLICER_PYTHON)"
            if os.environ.get("CI"):
                pytest.fail(msg + "; CI requires them")
            pytest.skip(msg)
        existing = getattr(slicer, "app", None)
        if existing is not None and not isinstance(existing, SlicerApp):
            raise RuntimeError("Inside the Slicer application: the test harness must not replace it")
        from .scene import ensure_converters, new_scene

        ensure_converters()  # what Slicer's Segmentations module logic does at start-up
        scene = new_scene()
        self._colors = slicer.vtkMRMLColorLogic()  # what the Colors module does: default colour tables
        self._colors.SetMRMLScene(scene)
        self._tmp = tempfile.TemporaryDirectory(prefix="imagio-slicer-harness-")
        _APP_STATE["timers"].clear()
        _APP_STATE["pending_single_shots"].clear()
        _APP_STATE["settings"].clear()
        _APP_STATE["cursor_depth"] = 0
        _DIALOG_ANSWERS.clear()
        DIALOGS.clear()
        self.app = SlicerApp(scene, self.version, self.testing, self._tmp.name)
        self._saved = {
            "modules": {k: sys.modules.get(k) for k in ("qt", "ctk", "slicer.util")},
            "attrs": {k: getattr(slicer, k, _MISSING) for k in
                      ("app", "mrmlScene", "modules", "moduleNames", "selfTests", "util", "dicomDatabase", *SLICER_CLASSES,
                       "qSlicerScriptedLoadableModule")},
            "path": list(slicer.__path__),
            "env_path": os.environ.get("PATH", ""),
            "make_phantom": _install_phantom_cache(),
        }
        sys.modules["qt"], sys.modules["ctk"] = QT_MODULE, CTK_MODULE
        if str(fw) not in slicer.__path__:
            slicer.__path__.append(str(fw))
        util = _load_framework_util(fw)
        sys.modules["slicer.util"] = util
        slicer.util = util
        slicer.app = self.app
        slicer.mrmlScene = scene
        slicer.dicomDatabase = ctkDICOMDatabase()  # what the DICOM module opens at start-up (empty here)
        slicer.modules = types.ModuleType("slicer.modules")
        slicer.moduleNames = types.ModuleType("slicer.moduleNames")
        for name, cls in SLICER_CLASSES.items():
            setattr(slicer, name, cls)
        slicer.qSlicerScriptedLoadableModule = qSlicerScriptedLoadableModule
        os.environ["PATH"] = _python_slicer_dir(self._tmp.name) + os.pathsep + os.environ.get("PATH", "")
        for d in {str(REPO_ROOT / m) for m in MODULES}:
            if d not in sys.path:
                sys.path.append(d)
        return self

    def stop(self) -> None:
        if self.app is None:
            return
        for name in list(self.app._manager.modules):  # the application closing: widgets clean up first
            self.unload_module(name)
        self.app.scene.Clear(1)
        for w in list(_SCENE_WIDGETS):
            w._detach()
        for t in list(_APP_STATE["timers"]):
            t.stop()
        for k, v in self._saved["modules"].items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k, v in self._saved["attrs"].items():
            if v is _MISSING:
                if hasattr(slicer, k):
                    delattr(slicer, k)
            else:
                setattr(slicer, k, v)
        slicer.__path__[:] = self._saved["path"]
        os.environ["PATH"] = self._saved["env_path"]
        imagio.phantom.make_phantom = self._saved["make_phantom"]
        self.app = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def scene(self):
        return self.app.scene

    # -------------------------------------------------------------- modules
    def import_module(self, name: str) -> types.ModuleType:
        """Import ``<name>.py`` the way Slicer does (its folder on sys.path, imported by name)."""
        if name not in self.modules:
            mod = sys.modules.get(name)
            path = REPO_ROOT / name / f"{name}.py"
            if mod is None or Path(getattr(mod, "__file__", None) or "").resolve() != path.resolve():
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            self.modules[name] = mod
        return self.modules[name]

    def load_module(self, name: str):
        """Import the module file and instantiate its Module class on a ``qSlicerScriptedLoadableModule``."""
        mod = self.import_module(name)
        parent = qSlicerScriptedLoadableModule(REPO_ROOT / name / f"{name}.py")
        instance = getattr(mod, name)(parent)
        setattr(slicer.modules, name.lower(), parent)
        setattr(slicer.modules, f"{name}Instance", instance)
        setattr(slicer.moduleNames, name, name)
        self.app._manager.modules[name] = parent
        return instance

    def create_widget(self, name: str, enter: bool = True):
        """The module's Widget on a fresh module panel: ``setup()`` and (by default) ``enter()``."""
        if name not in self.app._manager.modules:
            self.load_module(name)
        mod = self.modules[name]
        panel = qSlicerScriptedLoadableModuleWidget()
        panel.setLayout(QVBoxLayout())
        panel.setMRMLScene(self.scene)
        widget = getattr(mod, f"{name}Widget")(panel)
        panel.python_widget = widget
        self.app._manager.modules[name]._widget = panel
        widget.setup()
        setattr(slicer.modules, f"{name}Widget", widget)
        if enter:
            panel.isEntered = True
            widget.enter()
        return widget

    def unload_module(self, name: str) -> None:
        """What the application does when it closes: ``moduleAboutToBeUnloaded(name)`` (widgets clean up)."""
        self.app._manager.moduleAboutToBeUnloaded.emit(name)

    # -------------------------------------------------------------- events and dialogs
    def run_event_loop(self, until=None, timeout_s: float = 30.0, step_s: float = 0.01) -> bool:
        """Fire due timers until ``until()`` is true (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.app._run_due_timers()
            if until is not None and until():
                return True
            if time.monotonic() > deadline:
                return until is None
            time.sleep(step_s)

    def answer_dialogs(self, *answers: int) -> None:
        """Queue the buttons a user presses in the next message boxes (``qt.QMessageBox.Ok`` ...)."""
        _DIALOG_ANSWERS.extend(answers)

    @property
    def dialogs(self) -> list[dict]:
        return DIALOGS

    def show_main_window(self) -> None:
        """A main window exists (message boxes are shown to it, not only logged)."""
        w = QWidget()
        w.objectName = "qSlicerMainWindow"
        self.app.main_window = w

    @property
    def cursor_depth(self) -> int:
        return _APP_STATE["cursor_depth"]

    @property
    def active_timers(self) -> int:
        return len(_APP_STATE["timers"])


_MISSING = object()
#: phantoms built while a harness ran, by their arguments (at most a few: each holds about 150 MB)
_PHANTOMS: dict = {}
_PHANTOM_CACHE_SIZE = 2


def _install_phantom_cache():
    """Replace ``imagio.phantom.make_phantom`` by a once-per-arguments build handing out deep copies;
    returns the original (restored by :meth:`SlicerHarness.stop`)."""
    original = imagio.phantom.make_phantom
    original = getattr(original, "__wrapped__", original)

    @functools.wraps(original)
    def make_phantom(*args, **kwargs):
        try:
            key = (args, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:  # unhashable arguments (lists): no cache
            return original(*args, **kwargs)
        if key not in _PHANTOMS:
            while len(_PHANTOMS) >= _PHANTOM_CACHE_SIZE:
                _PHANTOMS.pop(next(iter(_PHANTOMS)))
            _PHANTOMS[key] = original(*args, **kwargs)
        return copy.deepcopy(_PHANTOMS[key])

    imagio.phantom.make_phantom = make_phantom
    return original


def _load_framework_util(fw: Path) -> types.ModuleType:
    """Slicer 5.10's ``slicer/util.py`` as the module ``slicer.util`` (loaded once per process)."""
    cached = _FRAMEWORK_UTIL.get(str(fw))
    if cached is None:
        spec = importlib.util.spec_from_file_location("slicer.util", fw / "util.py")
        cached = importlib.util.module_from_spec(spec)
        saved = sys.modules.get("slicer.util")
        sys.modules["slicer.util"] = cached
        try:
            spec.loader.exec_module(cached)
        finally:
            if saved is not None:
                sys.modules["slicer.util"] = saved
        _FRAMEWORK_UTIL[str(fw)] = cached
    return cached


_FRAMEWORK_UTIL: dict = {}


def _python_slicer_dir(tmp: str) -> str:
    """A folder with a ``PythonSlicer`` launcher (this Python), as Slicer puts its own on PATH."""
    d = Path(tmp) / "bin"
    d.mkdir(exist_ok=True)
    if os.name == "nt":
        (d / "PythonSlicer.bat").write_text(f'@"{sys.executable}" %*\n')
    else:
        p = d / "PythonSlicer"
        p.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        p.chmod(0o755)
    return str(d)


def ui_cells(path: Path) -> list[tuple[str, int, int, str]]:
    """Every layout cell an item of a .ui file occupies: (layout name, row, column, item name).

    As Qt's form builder places them (``formLayoutRole`` in qttools' abstractformbuilder.cpp, Qt 5.15):
    in a QFormLayout column 0 is the label cell, any other column the field cell, and a column span
    over 1 the whole row; in a QGridLayout an item covers its row and column spans.
    """
    out = []
    for lay in ET.parse(path).getroot().iter("layout"):
        kind = lay.get("class")
        if kind not in ("QGridLayout", "QFormLayout"):
            continue
        for item in lay.findall("item"):
            child = next((e for e in item if e.tag in ("widget", "layout", "spacer")), None)
            if item.get("row") is None or child is None:
                continue
            r, c = int(item.get("row")), int(item.get("column", "0"))
            rs, cs = int(item.get("rowspan", "1")), int(item.get("colspan", "1"))
            if kind == "QFormLayout":
                cols = [0, 1] if cs > 1 else [0 if c == 0 else 1]
                rows = [r]
            else:
                cols, rows = list(range(c, c + cs)), list(range(r, r + rs))
            name = child.get("name", child.tag)
            out += [(lay.get("name", ""), rr, cc, name) for rr in rows for cc in cols]
    return out


def ui_classes(path: Path) -> set[str]:
    """Every widget and layout class a .ui file instantiates."""
    root = ET.parse(path).getroot()
    return {e.get("class") for e in root.iter() if e.tag in ("widget", "layout") and e.get("class")}


def ui_widget_names(path: Path) -> set[str]:
    root = ET.parse(path).getroot()
    return {e.get("name") for e in root.iter() if e.tag in ("widget", "action", "layout") and e.get("name")}



# ---------------------------------------------------------------------------------------------- parameter nodes
def sample_value(datatype, scene, current=None):
    """A valid value of a parameter-node field type that differs from ``current`` (for round trips).

    Handles what parameterNodeWrapper serialises: bool, int, float (inside WithinRange / Minimum /
    Maximum), str (a Choice picks another choice), Enum, pathlib paths, MRML nodes (a new node of the
    first allowed class is added to ``scene``), list[...], and parameter packs.
    """
    from slicer.parameterNodeWrapper import (
        Choice,
        Maximum,
        Minimum,
        WithinRange,
        findFirstAnnotation,
        getNodeTypes,
        isNodeOrUnionOfNodes,
        isParameterPack,
        splitAnnotations,
    )

    base, ann = splitAnnotations(datatype)
    choice = findFirstAnnotation(ann, Choice)
    if choice is not None:
        return next(c for c in choice.choices if c != current)
    if isNodeOrUnionOfNodes(datatype):
        node = scene.AddNewNodeByClass(getNodeTypes(datatype)[0])
        node.SetName(scene.GenerateUniqueName("round trip"))
        return node
    if base is bool:
        return not current
    if base in (int, float):
        rng = findFirstAnnotation(ann, WithinRange)
        lo = rng.minimum if rng else getattr(findFirstAnnotation(ann, Minimum), "minimum", 0)
        hi = rng.maximum if rng else getattr(findFirstAnnotation(ann, Maximum), "maximum", lo + 10)
        # one decimal, so a spin box showing one decimal holds it exactly
        v, w = (round(lo + f * (hi - lo), 1) for f in (0.375, 0.625))
        return base(v) if base(v) != current else base(w)
    if base is str:
        return "round trip: Größe 3 mm" if current != "round trip: Größe 3 mm" else "other"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return next(m for m in base if m != current)
    if isinstance(base, type) and issubclass(base, pathlib.PurePath):
        return base("/tmp/imagio round trip/model card.json")
    if typing.get_origin(base) is list:
        (elem,) = typing.get_args(base)
        return [sample_value(elem, scene, None), sample_value(elem, scene, None)]
    if isParameterPack(base):
        values = {}
        for f in dataclasses.fields(base):
            values[f.name] = sample_value(base.dataType(f.name), scene, getattr(current, f.name, None))
        return base(**values)
    raise TypeError(f"No sample value for a parameter of type {datatype}")


def same_value(a, b) -> bool:
    """Equality as a parameter node gives values back (nodes by ID, packs field by field)."""
    if hasattr(a, "GetID") or hasattr(b, "GetID"):
        return a is not None and b is not None and a.GetID() == b.GetID()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return all(same_value(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def reload_scene_xml(scene):
    """The scene written to MRML (XML) and read back into a new scene, as saving and loading a .mrml does."""
    from .scene import new_scene

    scene.SetSaveToXMLString(1)
    scene.Commit()
    xml = scene.GetSceneXMLString()
    scene.SetSaveToXMLString(0)
    other = new_scene()
    other.SetLoadFromXMLString(1)
    other.SetSceneXMLString(xml)
    other.Import()
    other.SetLoadFromXMLString(0)
    return other
